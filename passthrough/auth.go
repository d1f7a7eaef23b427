package passthrough

import (
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Auth passes Authenticate through, so that a client with an etcd user gets
// its token from the proxy's address and sends it with its calls; etcd
// checks it (proxy/forward.go). Enabling auth and managing users and roles
// stay on etcd's own endpoints: an administrator's business, not a lock
// client's.
type Auth struct {
	pb.UnsafeAuthServer
	etcd *etcdio.Etcd
}

// NewAuth returns the Auth pass-through.
func NewAuth(etcd *etcdio.Etcd) *Auth {
	return &Auth{etcd: etcd}
}

// Authenticate passes etcd's Auth.Authenticate through.
func (a *Auth) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	return pb.NewAuthClient(a.etcd.Conn(ctx)).Authenticate(ctx, r)
}

// AuthEnable is not served through the proxy: it answers as notServed says.
func (a *Auth) AuthEnable(context.Context, *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	return nil, notServed("AuthEnable")
}

// AuthDisable is not served through the proxy: it answers as notServed says.
func (a *Auth) AuthDisable(context.Context, *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	return nil, notServed("AuthDisable")
}

// AuthStatus is not served through the proxy: it answers as notServed says.
func (a *Auth) AuthStatus(context.Context, *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return nil, notServed("AuthStatus")
}

// UserAdd is not served through the proxy: it answers as notServed says.
func (a *Auth) UserAdd(context.Context, *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	return nil, notServed("UserAdd")
}

// UserGet is not served through the proxy: it answers as notServed says.
func (a *Auth) UserGet(context.Context, *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	return nil, notServed("UserGet")
}

// UserList is not served through the proxy: it answers as notServed says.
func (a *Auth) UserList(context.Context, *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	return nil, notServed("UserList")
}

// UserDelete is not served through the proxy: it answers as notServed says.
func (a *Auth) UserDelete(context.Context, *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	return nil, notServed("UserDelete")
}

// UserChangePassword is not served through the proxy: it answers as notServed says.
func (a *Auth) UserChangePassword(context.Context, *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	return nil, notServed("UserChangePassword")
}

// UserGrantRole is not served through the proxy: it answers as notServed says.
func (a *Auth) UserGrantRole(context.Context, *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	return nil, notServed("UserGrantRole")
}

// UserRevokeRole is not served through the proxy: it answers as notServed says.
func (a *Auth) UserRevokeRole(context.Context, *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	return nil, notServed("UserRevokeRole")
}

// RoleAdd is not served through the proxy: it answers as notServed says.
func (a *Auth) RoleAdd(context.Context, *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	return nil, notServed("RoleAdd")
}

// RoleGet is not served through the proxy: it answers as notServed says.
func (a *Auth) RoleGet(context.Context, *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	return nil, notServed("RoleGet")
}

// RoleList is not served through the proxy: it answers as notServed says.
func (a *Auth) RoleList(context.Context, *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	return nil, notServed("RoleList")
}

// RoleDelete is not served through the proxy: it answers as notServed says.
func (a *Auth) RoleDelete(context.Context, *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	return nil, notServed("RoleDelete")
}

// RoleGrantPermission is not served through the proxy: it answers as notServed says.
func (a *Auth) RoleGrantPermission(context.Context, *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	return nil, notServed("RoleGrantPermission")
}

// RoleRevokePermission is not served through the proxy: it answers as notServed says.
func (a *Auth) RoleRevokePermission(context.Context, *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	return nil, notServed("RoleRevokePermission")
}
