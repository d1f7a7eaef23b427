package passthrough

import (
	"context"
	"errors"
	"io"
	"sync"
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
// etcd are returned as they are, for the caller to map. A request that in
// answers itself (replied: a refused watch) goes back to the client as that
// reply instead of to etcd. An error receiving from the client (the
// client went away, or the policy refused its request) ends the call.
func relay[Req, Resp any](ctx context.Context, cancel context.CancelFunc, down downStream[Req, Resp], up upStream[Req, Resp], in func(Req) (reply Resp, replied bool, err error), out func(Resp)) error {
	var sending sync.Mutex // down.Send from both directions
	sendDown := func(r Resp) error {
		sending.Lock()
		defer sending.Unlock()
		return down.Send(r)
	}
	inErr := make(chan error, 1)
	go func() {
		for {
			req, err := down.Recv()
			if errors.Is(err, io.EOF) {
				up.CloseSend()
				return
			}
			var replied bool
			if err != nil {
				inErr <- err // the client's side failed or refused (the policy)
			} else {
				var reply Resp
				if reply, replied, err = in(req); err != nil {
					inErr <- err
				} else if replied {
					err = sendDown(reply)
				}
			}
			if err == nil && !replied {
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
		if err := sendDown(resp); err != nil {
			return err
		}
	}
}
