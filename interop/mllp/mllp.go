// Package mllp is the Minimal Lower Layer Protocol (HL7 v2 transport over TCP, release 1 as
// every interface engine speaks it): a message travels as <VT> message <FS><CR> and each
// message is answered by one acknowledgement framed the same way before the next is sent.
// It provides the framing (ReadFrame, WriteFrame), a Server that answers each message with
// its Handler's reply, and a Client that sends one message and waits for its reply. It does
// not look inside messages: that is interop/hl7.
package mllp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Frame bytes.
const (
	StartBlock = 0x0b // <VT>
	EndBlock   = 0x1c // <FS>
	CR         = 0x0d
)

// DefaultMaxMessageBytes bounds a message when a Config leaves it zero (1 MiB).
const DefaultMaxMessageBytes = 1 << 20

var (
	// ErrFrame: the bytes on the connection are not MLLP frames (junk between frames, a
	// frame not closed by <FS><CR>, or a message holding <VT> or <FS>). The connection
	// cannot be resynchronised and is closed.
	ErrFrame = errors.New("mllp: bad frame")
	// ErrTooLarge: a frame is longer than the limit. The rest of it is read and discarded,
	// so the connection stays usable.
	ErrTooLarge = errors.New("mllp: message too large")
	// ErrClosed: the server or client was closed.
	ErrClosed = errors.New("mllp: closed")
)

// ReadFrame reads the next frame from r and returns the message inside it. White space
// (CR, LF, space) between frames is skipped; anything else there is ErrFrame. A message of
// more than max bytes (0: DefaultMaxMessageBytes) is read to its end and discarded, and
// ReadFrame returns ErrTooLarge. At a clean end of stream between frames it returns io.EOF.
func ReadFrame(r *bufio.Reader, max int) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	for {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		if c == StartBlock {
			break
		}
		if c != '\r' && c != '\n' && c != ' ' {
			return nil, fmt.Errorf("%w: byte 0x%02x outside a frame", ErrFrame, c)
		}
	}
	var msg []byte
	tooLarge := false
	for {
		chunk, err := r.ReadSlice(EndBlock)
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: connection ended inside a frame", ErrFrame)
			}
			return nil, err
		}
		body := chunk
		if err == nil {
			body = chunk[:len(chunk)-1]
		}
		if bytes.IndexByte(body, StartBlock) >= 0 {
			return nil, fmt.Errorf("%w: <VT> inside a frame", ErrFrame)
		}
		if !tooLarge {
			if len(msg)+len(body) > max {
				tooLarge, msg = true, nil
			} else {
				msg = append(msg, body...)
			}
		}
		if err == nil {
			break
		}
	}
	c, err := r.ReadByte()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: connection ended after <FS>", ErrFrame)
		}
		return nil, err
	}
	if c != CR {
		return nil, fmt.Errorf("%w: <FS> not followed by <CR>", ErrFrame)
	}
	if tooLarge {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)
	}
	if msg == nil {
		msg = []byte{}
	}
	return msg, nil
}

// AppendFrame appends msg framed to dst. It returns ErrFrame when msg holds <VT> or <FS>,
// which cannot be framed.
func AppendFrame(dst, msg []byte) ([]byte, error) {
	if bytes.IndexByte(msg, StartBlock) >= 0 || bytes.IndexByte(msg, EndBlock) >= 0 {
		return dst, fmt.Errorf("%w: message holds <VT> or <FS>", ErrFrame)
	}
	dst = append(dst, StartBlock)
	dst = append(dst, msg...)
	return append(dst, EndBlock, CR), nil
}

// WriteFrame writes msg framed to w in one write.
func WriteFrame(w io.Writer, msg []byte) error {
	b, err := AppendFrame(make([]byte, 0, len(msg)+3), msg)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Addr is the receiver's host:port. Required.
	Addr string
	// Dial opens connections. Default: a net.Dialer with a 10 s timeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxMessageBytes bounds an acknowledgement. Default DefaultMaxMessageBytes.
	MaxMessageBytes int
}

// Client sends messages to one receiver over one connection, opened on first use and again
// after any error. Send calls are serialised (MLLP allows one outstanding message per
// connection). Close ends the connection.
type Client struct {
	cfg    ClientConfig
	mu     sync.Mutex
	conn   net.Conn
	br     *bufio.Reader
	buf    []byte
	closed bool
}

// NewClient returns a client of cfg.Addr; it does not connect yet.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("mllp: client address is required")
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		cfg.Dial = d.DialContext
	}
	return &Client{cfg: cfg}, nil
}

// Send sends msg and returns the receiver's reply. The context's deadline bounds the whole
// exchange (connect, write, read). On any error the connection is closed, so the next Send
// starts on a fresh one; whether the receiver processed msg is then unknown (an
// at-least-once sender re-sends it).
func (c *Client) Send(ctx context.Context, msg []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	var err error
	c.buf, err = AppendFrame(c.buf[:0], msg)
	if err != nil {
		return nil, err
	}
	if c.conn == nil {
		conn, err := c.cfg.Dial(ctx, "tcp", c.cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("mllp: connect %s: %w", c.cfg.Addr, err)
		}
		c.conn, c.br = conn, bufio.NewReader(conn)
	}
	reply, err := c.exchange(ctx)
	if err != nil {
		_ = c.conn.Close()
		c.conn, c.br = nil, nil
		return nil, fmt.Errorf("mllp: send to %s: %w", c.cfg.Addr, err)
	}
	return reply, nil
}

func (c *Client) exchange(ctx context.Context) ([]byte, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Time{}
	}
	if err := c.conn.SetDeadline(dl); err != nil {
		return nil, err
	}
	// Abort the exchange when ctx is cancelled without a deadline.
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.conn.Write(c.buf); err != nil {
		return nil, ctxErr(ctx, err)
	}
	reply, err := ReadFrame(c.br, c.cfg.MaxMessageBytes)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	return reply, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// Reset closes the current connection, if any; the next Send opens a new one. A sender
// calls it when a reply shows the connection is out of step (an ACK for another message).
func (c *Client) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn, c.br = nil, nil
	}
}

// Close closes the connection; later Sends return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.conn != nil {
		err := c.conn.Close()
		c.conn = nil
		return err
	}
	return nil
}
