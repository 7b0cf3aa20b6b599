package mllp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Request is one message received by a Server.
type Request struct {
	// Message is the framed message; nil when Err is set.
	Message []byte
	// Err is ErrTooLarge for a message over the limit (the connection stays open) or
	// ErrFrame for bytes that are not a frame (the connection is closed after the reply).
	// The handler answers it (an AR) and audits it.
	Err error
	// Peer is the remote address.
	Peer net.Addr
}

// Handler answers the messages of a Server.
type Handler interface {
	// ServeMLLP returns the reply (the acknowledgement) to req. It is called for each
	// message in the order of its connection, one at a time per connection, concurrently
	// across connections. A nil reply sends nothing. It MUST return once ctx is done.
	ServeMLLP(ctx context.Context, req Request) []byte
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req Request) []byte

// ServeMLLP calls f.
func (f HandlerFunc) ServeMLLP(ctx context.Context, req Request) []byte { return f(ctx, req) }

// ServerConfig configures a Server.
type ServerConfig struct {
	// Handler answers each message. Required.
	Handler Handler
	// MaxMessageBytes bounds one message. Default DefaultMaxMessageBytes (1 MiB).
	MaxMessageBytes int
	// IdleTimeout closes a connection that sends nothing for this long. Default 10 minutes
	// (interface engines keep connections open between messages).
	IdleTimeout time.Duration
	// WriteTimeout bounds writing one reply. Default 30 s.
	WriteTimeout time.Duration
	// MaxConns is the most connections served at once; more are closed on accept.
	// Default 64.
	MaxConns int
}

// Server accepts MLLP connections and answers each message with its Handler's reply.
type Server struct {
	cfg    ServerConfig
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[net.Conn]bool
	closed    bool
	wg        sync.WaitGroup
}

// NewServer returns a server; Serve starts it on a listener.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("mllp: server handler is required")
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 64
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, ctx: ctx, cancel: cancel, listeners: map[net.Listener]bool{}, conns: map[net.Conn]bool{}}, nil
}

// Serve accepts connections on l until Close; it returns ErrClosed then, or the listener's
// error. It closes l when it returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = l.Close()
		return ErrClosed
	}
	s.listeners[l] = true
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		_ = l.Close()
	}()
	var backoff time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
				}
				continue
			}
			return err
		}
		backoff = 0
		s.mu.Lock()
		if s.closed || len(s.conns) >= s.cfg.MaxConns {
			s.mu.Unlock()
			_ = conn.Close()
			continue
		}
		s.conns[conn] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn)
	}
}

func (s *Server) serveConn(conn net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	br := bufio.NewReader(conn)
	for {
		// Under mu, so that Close's deadline (set under mu) is never overwritten.
		s.mu.Lock()
		closed := s.closed
		err := conn.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		s.mu.Unlock()
		if closed || err != nil {
			return
		}
		msg, err := ReadFrame(br, s.cfg.MaxMessageBytes)
		req := Request{Message: msg, Peer: conn.RemoteAddr()}
		if err != nil {
			if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrFrame) {
				return // io.EOF, timeout, reset: nothing to answer
			}
			req.Err, req.Message = err, nil
		}
		reply := s.cfg.Handler.ServeMLLP(s.ctx, req)
		if reply != nil {
			if err := conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil {
				return
			}
			if err := WriteFrame(conn, reply); err != nil {
				return
			}
		}
		if errors.Is(req.Err, ErrFrame) {
			return
		}
	}
}

// Close stops accepting, lets each connection finish the message it is handling (until ctx
// is done, when in-flight handlers are cancelled and connections closed), and returns once
// every goroutine of the server has ended.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		_ = l.Close()
	}
	// Unblock connections waiting for their next message; a handler busy with one finishes
	// and its reply is written before the connection ends.
	for c := range s.conns {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

var _ io.Closer = (*Client)(nil)
