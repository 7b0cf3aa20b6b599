package mllp_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/interop/mllp"
)

func frame(s string) string { return "\x0b" + s + "\x1c\r" }

// Verifies: REQ-INT-002
func TestReadFrame(t *testing.T) {
	for _, c := range []struct {
		name string
		in   string
		max  int
		want []string
		err  error
	}{
		{"two frames", frame("MSH|a") + frame("MSH|b"), 0, []string{"MSH|a", "MSH|b"}, io.EOF},
		{"white space between frames", "\r\n" + frame("m1") + "\n " + frame("m2"), 0, []string{"m1", "m2"}, io.EOF},
		{"empty message", frame(""), 0, []string{""}, io.EOF},
		{"junk before a frame", "junk" + frame("m"), 0, nil, mllp.ErrFrame},
		{"ended inside a frame", "\x0bMSH|a", 0, nil, mllp.ErrFrame},
		{"FS without CR", "\x0bMSH\x1cX", 0, nil, mllp.ErrFrame},
		{"VT inside a frame", "\x0bMS\x0bH\x1c\r", 0, nil, mllp.ErrFrame},
		{"too large, then the next frame still reads", frame(strings.Repeat("x", 5000)) + frame("ok"), 100, nil, mllp.ErrTooLarge},
	} {
		br := bufio.NewReaderSize(strings.NewReader(c.in), 16)
		var got []string
		var err error
		for {
			var m []byte
			m, err = mllp.ReadFrame(br, c.max)
			if err != nil {
				break
			}
			got = append(got, string(m))
		}
		if !errors.Is(err, c.err) || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: ReadFrame = %q then %v, want %q then %v", c.name, got, err, c.want, c.err)
		}
		if errors.Is(c.err, mllp.ErrTooLarge) {
			if m, err := mllp.ReadFrame(br, c.max); err != nil || string(m) != "ok" {
				t.Errorf("%s: ReadFrame after ErrTooLarge = %q, %v; want ok", c.name, m, err)
			}
		}
	}
	if err := mllp.WriteFrame(io.Discard, []byte("a\x1cb")); !errors.Is(err, mllp.ErrFrame) {
		t.Errorf("WriteFrame(message holding FS) = %v, want ErrFrame", err)
	}
}

// FuzzReadFrame: the framing faces the network; it must not panic, must respect the limit,
// and what it returns re-frames to bytes it reads back identically.
//
// Verifies: REQ-INT-002
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte(frame("MSH|^~\\&|A") + frame("")))
	f.Add([]byte("\r\n\x0bX\x1c"))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 16)
		for i := 0; i < 10; i++ {
			m, err := mllp.ReadFrame(br, 64)
			if err != nil {
				return
			}
			if len(m) > 64 {
				t.Fatalf("ReadFrame returned %d bytes over the limit 64", len(m))
			}
			var w bytes.Buffer
			if err := mllp.WriteFrame(&w, m); err != nil {
				t.Fatalf("WriteFrame(ReadFrame()) = %v", err)
			}
			back, err := mllp.ReadFrame(bufio.NewReader(&w), 64)
			if err != nil || !bytes.Equal(back, m) {
				t.Fatalf("round trip = %q, %v; want %q", back, err, m)
			}
		}
	})
}

func startServer(t *testing.T, cfg mllp.ServerConfig) (*mllp.Server, string) {
	t.Helper()
	srv, err := mllp.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		_ = srv.Close(context.Background())
		if err := <-done; !errors.Is(err, mllp.ErrClosed) {
			t.Errorf("Serve = %v, want ErrClosed", err)
		}
	})
	return srv, l.Addr().String()
}

// Verifies: REQ-INT-002
func TestServerAndClient(t *testing.T) {
	var mu sync.Mutex
	var errs []error
	_, addr := startServer(t, mllp.ServerConfig{MaxMessageBytes: 64, Handler: mllp.HandlerFunc(func(ctx context.Context, r mllp.Request) []byte {
		if r.Err != nil {
			mu.Lock()
			errs = append(errs, r.Err)
			mu.Unlock()
			return []byte("REFUSED")
		}
		return append([]byte("ACK:"), r.Message...)
	})})
	c, err := mllp.NewClient(mllp.ClientConfig{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range []string{"one", "two", strings.Repeat("x", 100), "three"} {
		want := "ACK:" + m
		if len(m) > 64 {
			want = "REFUSED"
		}
		got, err := c.Send(ctx, []byte(m))
		if err != nil || string(got) != want {
			t.Errorf("Send(%.10q) = %q, %v; want %q", m, got, err, want)
		}
	}
	mu.Lock()
	if len(errs) != 1 || !errors.Is(errs[0], mllp.ErrTooLarge) {
		t.Errorf("handler saw errors %v, want one ErrTooLarge", errs)
	}
	mu.Unlock()

	// Junk on a raw connection: the handler is told (ErrFrame), its reply sent, the
	// connection closed.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	if got, err := mllp.ReadFrame(br, 0); err != nil || string(got) != "REFUSED" {
		t.Errorf("reply to junk = %q, %v; want REFUSED", got, err)
	}
	if _, err := mllp.ReadFrame(br, 0); !errors.Is(err, io.EOF) {
		t.Errorf("after junk the connection = %v, want closed (EOF)", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, []byte("late")); !errors.Is(err, mllp.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
}

// Verifies: REQ-INT-002
func TestServerCloseFinishesInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	srv, addr := startServer(t, mllp.ServerConfig{Handler: mllp.HandlerFunc(func(ctx context.Context, r mllp.Request) []byte {
		close(entered)
		<-release
		return []byte("done")
	})})
	c, _ := mllp.NewClient(mllp.ClientConfig{Addr: addr})
	defer c.Close()
	got := make(chan string, 1)
	go func() {
		b, err := c.Send(context.Background(), []byte("m"))
		got <- string(b) + errString(err)
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- srv.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while a message was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if r := <-got; r != "done" {
		t.Errorf("in-flight Send = %q, want its reply", r)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close = %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}
