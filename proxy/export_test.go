package proxy

// EndDrainDelay ends s's drain delay now, as if it had passed, and returns
// once new calls are refused: tests order their steps by it rather than by
// sleeping for the delay.
func EndDrainDelay(s *Server) {
	close(s.drain.end)
	<-s.drain.refusing
}

// ServedServices is what s serves, by gRPC service name.
func ServedServices(s *Server) []string { return servedServices(s.grpc) }

// GatewayServices is what the JSON gateway serves, by gRPC service name.
func GatewayServices() []string {
	var names []string
	for _, g := range gatewayServices {
		names = append(names, g.name)
	}
	return names
}

// ServedMethods is every method s serves, by gRPC full method name.
func ServedMethods(s *Server) []string {
	var methods []string
	for name, info := range s.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			methods = append(methods, "/"+name+"/"+m.Name)
		}
	}
	return methods
}
