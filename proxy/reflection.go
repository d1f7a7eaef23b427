package proxy

import (
	"fmt"
	"path"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	v1reflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphareflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// registerReflection serves gRPC server reflection so that grpcurl can list
// and call the services.
//
// etcd's generated packages register their files under short names
// ("rpc.proto", "kv.proto") while the files that import them name the full
// path ("etcd/api/etcdserverpb/rpc.proto"), so a reflection client cannot
// resolve the Lock, Election or Lease services from the global registry.
// The reflection service gets its own registry with those files under the
// paths their importers use.
func registerReflection(s *grpc.Server) error {
	files, err := reflectionFiles(s)
	if err != nil {
		return err
	}
	opts := reflection.ServerOptions{Services: s, DescriptorResolver: files, ExtensionResolver: protoregistry.GlobalTypes}
	v1reflectiongrpc.RegisterServerReflectionServer(s, reflection.NewServerV1(opts))
	v1alphareflectiongrpc.RegisterServerReflectionServer(s, reflection.NewServer(opts))
	return nil
}

// reflectionFiles collects the files of s's services and everything they
// import, renamed to the paths their importers use.
func reflectionFiles(s *grpc.Server) (*protoregistry.Files, error) {
	global := protoregistry.GlobalFiles
	// What every short-named file is imported as: <dir>/<base> where the
	// directory is named after the file's package.
	alias := map[string]string{} // registered path -> imported path
	global.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		imps := fd.Imports()
		for i := range imps.Len() {
			imp := imps.Get(i)
			if !imp.IsPlaceholder() {
				continue
			}
			base := path.Base(imp.Path())
			if real, err := global.FindFileByPath(base); err == nil && strings.HasSuffix(path.Dir(imp.Path()), string(real.Package())) {
				alias[base] = imp.Path()
			}
		}
		return true
	})
	lookup := func(p string) (protoreflect.FileDescriptor, error) {
		if fd, err := global.FindFileByPath(p); err == nil {
			return fd, nil
		}
		return global.FindFileByPath(path.Base(p))
	}

	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor) error
	add = func(fd protoreflect.FileDescriptor) error {
		if seen[fd.Path()] {
			return nil
		}
		seen[fd.Path()] = true
		imps := fd.Imports()
		for i := range imps.Len() {
			dep, err := lookup(imps.Get(i).Path())
			if err != nil {
				return fmt.Errorf("reflection: %s imports %s: %w", fd.Path(), imps.Get(i).Path(), err)
			}
			if err := add(dep); err != nil {
				return err
			}
		}
		fdp := protodesc.ToFileDescriptorProto(fd)
		if a, ok := alias[fd.Path()]; ok {
			fdp.Name = &a
		}
		set.File = append(set.File, fdp)
		return nil
	}
	names := []string{v1reflectiongrpc.ServerReflection_ServiceDesc.ServiceName, v1alphareflectiongrpc.ServerReflection_ServiceDesc.ServiceName}
	for name := range s.GetServiceInfo() {
		names = append(names, name)
	}
	for _, name := range names {
		d, err := global.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			return nil, fmt.Errorf("reflection: service %s: %w", name, err)
		}
		if err := add(d.ParentFile()); err != nil {
			return nil, err
		}
	}
	return protodesc.NewFiles(set)
}
