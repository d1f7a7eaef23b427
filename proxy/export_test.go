package proxy

// EndDrainDelay ends s's drain delay now, as if it had passed, and returns
// once new calls are refused: tests order their steps by it rather than by
// sleeping for the delay.
func EndDrainDelay(s *Server) {
	close(s.drain.end)
	<-s.drain.refusing
}
