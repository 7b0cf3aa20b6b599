package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

// The stream readers of `vigil-bench streams --readers-process`: the headless SSE clients run
// in a child process (`vigil-bench streams readers`, started by the tool itself), so that
// their CPU is not the server's. The parent drives it with one JSON line per request on its
// stdin and reads one JSON line per answer on its stdout.

// readerRequest is one request to the readers' process.
type readerRequest struct {
	Op       string          `json:"op"` // "open", "reset", "collect"
	Base     string          `json:"base,omitempty"`
	Sessions []readerSession `json:"sessions,omitempty"` // open: the sessions to open now
	Accepted []readerUpload  `json:"accepted,omitempty"` // collect: the round's accepted uploads
}

type readerSession struct {
	Ward   int    `json:"ward"`
	Cookie string `json:"cookie"` // name=value
	URL    string `json:"url"`
}

type readerUpload struct {
	ID     uuid.UUID `json:"id"`
	Ward   int       `json:"ward"`
	Sent   time.Time `json:"sent"`
	Answer time.Time `json:"answer"`
}

// readerAnswer answers a request; Stats answers collect.
type readerAnswer struct {
	Error string       `json:"error,omitempty"`
	Stats *streamStats `json:"stats,omitempty"`
	// CPU is the readers' process CPU time so far (user + system).
	CPU time.Duration `json:"cpu"`
}

// streamStats is what a round's sessions received of its accepted uploads.
type streamStats struct {
	FromAnswer [3]time.Duration `json:"from_answer"` // p50, p99, max
	FromSent99 time.Duration    `json:"from_sent_p99"`
	Deliveries int              `json:"deliveries"`
	Missed     int              `json:"missed"`
	Resets     int              `json:"resets"`
	Lost       int              `json:"lost"`
	Disorder   int              `json:"disorder"`
}

// computeStreamStats matches the accepted uploads with the arrivals of every session of
// their ward.
func computeStreamStats(wards int, accepted []acceptedUpload, sessions []*streamSession) streamStats {
	byWard := make([][]*streamSession, wards)
	for _, s := range sessions {
		byWard[s.ward] = append(byWard[s.ward], s)
	}
	var st streamStats
	var fromAnswer, fromSent []time.Duration
	for _, s := range sessions {
		s.mu.Lock()
	}
	for _, u := range accepted {
		for _, s := range byWard[u.ward] {
			at, ok := s.arrivals[u.id]
			if !ok {
				st.Missed++
				continue
			}
			st.Deliveries++
			fromAnswer = append(fromAnswer, max(0, at.Sub(u.answer)))
			fromSent = append(fromSent, at.Sub(u.sent))
		}
	}
	for _, s := range sessions {
		st.Resets += s.resets
		st.Disorder += s.disorder
		if s.ended != nil {
			st.Lost++
		}
		s.mu.Unlock()
	}
	sortDur(fromAnswer)
	sortDur(fromSent)
	q := func(d []time.Duration, q float64) time.Duration {
		if len(d) == 0 {
			return -1
		}
		return d[min(len(d)-1, int(q*float64(len(d))))]
	}
	st.FromAnswer = [3]time.Duration{q(fromAnswer, 0.5), q(fromAnswer, 0.99), q(fromAnswer, 1)}
	st.FromSent99 = q(fromSent, 0.99)
	return st
}

// streamReaders opens sessions' streams and reports what they received: in this process, or
// in a child process.
type streamReaders interface {
	open(ctx context.Context, base string, sessions []*streamSession) error
	reset() error
	collect(wards int, accepted []acceptedUpload) (streamStats, error)
	close()
}

// localReaders reads the streams in this process.
type localReaders struct {
	client   *http.Client
	ctx      context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup
	sessions []*streamSession
}

func newLocalReaders(ctx context.Context) *localReaders {
	r := &localReaders{client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}}
	r.ctx, r.stop = context.WithCancel(ctx)
	return r
}

func (r *localReaders) open(_ context.Context, base string, sessions []*streamSession) error {
	for i, s := range sessions {
		if err := openStream(r.ctx, r.client, base, s, &r.wg); err != nil {
			return fmt.Errorf("session %d: %w", len(r.sessions)+i, err)
		}
	}
	r.sessions = append(r.sessions, sessions...)
	return nil
}

func (r *localReaders) reset() error {
	for _, s := range r.sessions {
		s.mu.Lock()
		s.arrivals = map[uuid.UUID]time.Time{}
		s.mu.Unlock()
	}
	return nil
}

func (r *localReaders) collect(wards int, accepted []acceptedUpload) (streamStats, error) {
	return computeStreamStats(wards, accepted, r.sessions), nil
}

func (r *localReaders) close() {
	r.stop()
	r.wg.Wait()
	r.client.CloseIdleConnections()
}

// childReaders reads the streams in a child process (`vigil-bench streams readers`).
type childReaders struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	cpu time.Duration // the child's CPU at its last answer
}

func startChildReaders(ctx context.Context) (*childReaders, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "streams", "readers")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &childReaders{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20)}, nil
}

func (c *childReaders) call(req readerRequest) (readerAnswer, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return readerAnswer{}, err
	}
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		return readerAnswer{}, fmt.Errorf("readers' process: %w", err)
	}
	line, err := c.out.ReadBytes('\n')
	if err != nil {
		return readerAnswer{}, fmt.Errorf("readers' process: %w", err)
	}
	var a readerAnswer
	if err := json.Unmarshal(line, &a); err != nil {
		return a, fmt.Errorf("readers' process: %w", err)
	}
	if a.Error != "" {
		return a, fmt.Errorf("readers' process: %s", a.Error)
	}
	c.cpu = a.CPU
	return a, nil
}

func (c *childReaders) open(_ context.Context, base string, sessions []*streamSession) error {
	req := readerRequest{Op: "open", Base: base}
	for _, s := range sessions {
		req.Sessions = append(req.Sessions, readerSession{Ward: s.ward, Cookie: s.cookie.Name + "=" + s.cookie.Value, URL: s.url})
	}
	_, err := c.call(req)
	return err
}

func (c *childReaders) reset() error {
	_, err := c.call(readerRequest{Op: "reset"})
	return err
}

func (c *childReaders) collect(_ int, accepted []acceptedUpload) (streamStats, error) {
	req := readerRequest{Op: "collect"}
	for _, u := range accepted {
		req.Accepted = append(req.Accepted, readerUpload{ID: u.id, Ward: u.ward, Sent: u.sent, Answer: u.answer})
	}
	a, err := c.call(req)
	if err != nil {
		return streamStats{}, err
	}
	if a.Stats == nil {
		return streamStats{}, errors.New("readers' process: no statistics")
	}
	return *a.Stats, nil
}

func (c *childReaders) close() {
	c.in.Close() // the child returns at the end of its input
	_ = c.cmd.Wait()
}

// newStreamReadersCmd is the child process's command.
func newStreamReadersCmd() *cobra.Command {
	var wards int
	return &cobra.Command{
		Use:    "readers",
		Short:  "The stream readers' process of vigil-bench streams --readers-process (started by it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r := newLocalReaders(ctx)
			defer r.close()
			in := bufio.NewReaderSize(os.Stdin, 1<<20)
			enc := json.NewEncoder(os.Stdout)
			for {
				line, err := in.ReadBytes('\n')
				if err != nil {
					return nil // the parent closed its end
				}
				var req readerRequest
				var a readerAnswer
				if err := json.Unmarshal(line, &req); err != nil {
					a.Error = err.Error()
				} else {
					switch req.Op {
					case "open":
						var ss []*streamSession
						for _, s := range req.Sessions {
							ck, err := http.ParseSetCookie(s.Cookie)
							if err != nil {
								a.Error = err.Error()
								break
							}
							ss = append(ss, &streamSession{ward: s.Ward, cookie: ck, url: s.URL})
							wards = max(wards, s.Ward+1)
						}
						if a.Error == "" {
							if err := r.open(ctx, req.Base, ss); err != nil {
								a.Error = err.Error()
							}
						}
					case "reset":
						_ = r.reset()
					case "cpu": // the answer's CPU only
					case "collect":
						acc := make([]acceptedUpload, len(req.Accepted))
						for i, u := range req.Accepted {
							acc[i] = acceptedUpload{id: u.ID, ward: u.Ward, sent: u.Sent, answer: u.Answer}
							wards = max(wards, u.Ward+1)
						}
						st := computeStreamStats(wards, acc, r.sessions)
						a.Stats = &st
					default:
						a.Error = "unknown op " + req.Op
					}
				}
				a.CPU = selfCPU()
				if err := enc.Encode(a); err != nil {
					return err
				}
			}
		},
	}
}

// selfCPU is this process's CPU time so far (user + system), 0 where not available.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
