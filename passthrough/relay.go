package passthrough

import (
	"context"
	"errors"
	"io"
)

// downStream is the client's side of a bidirectional stream the proxy
// serves; upStream is the same stream opened to etcd.
type downStream[Req, Resp any] interface {
	Recv() (Req, error)
	Send(Resp) error
}

type upStream[Req, Resp any] interface {
	Send(Req) error
	Recv() (Resp, error)
	CloseSend() error
}

// relay copies one client stream onto one etcd stream and back, changing
// each request with in and each response with out on the way (namespace
// prefixes). It ends when either side ends: when the client is done sending,
// etcd is told so and its end of the stream ends the call; when the client
// goes away or in refuses a request, cancel ends the etcd stream. Errors from
// etcd are returned as they are, for the caller to map. An error receiving
// from the client (the client went away, or the edge refused its request:
// package authz) ends the call with that error.
func relay[Req, Resp any](cancel context.CancelFunc, down downStream[Req, Resp], up upStream[Req, Resp], in func(Req) error, out func(Resp)) error {
	inErr := make(chan error, 1)
	go func() {
		for {
			req, err := down.Recv()
			if errors.Is(err, io.EOF) {
				up.CloseSend()
				return
			}
			if err == nil {
				err = in(req)
			}
			if err != nil {
				inErr <- err // the client's side failed or was refused
			} else {
				err = up.Send(req)
			}
			if err != nil {
				cancel()
				return
			}
		}
	}()
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			select {
			case err = <-inErr:
			default:
			}
			return err
		}
		out(resp)
		if err := down.Send(resp); err != nil {
			return err
		}
	}
}
