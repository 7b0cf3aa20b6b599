package witness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// MaxProofLines is the most consistency proof lines a request may carry (C2SP tlog-witness).
const MaxProofLines = 63

// maxBody bounds an add-checkpoint request or response.
const maxBody = 64 << 10

// ContentTypeSize is the content type of a 409 Conflict body: the witness's size.
const ContentTypeSize = "text/x.tlog.size"

// Request is a parsed add-checkpoint request.
type Request struct {
	OldSize    uint64
	Proof      [][]byte
	Checkpoint []byte // the signed checkpoint note
}

// EncodeRequest is the add-checkpoint request body.
func EncodeRequest(r Request) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", r.OldSize)
	for _, h := range r.Proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.Write(r.Checkpoint)
	return b.Bytes()
}

// ErrMalformedRequest is returned by ParseRequest for a body that is not an add-checkpoint
// request.
var ErrMalformedRequest = errors.New("malformed add-checkpoint request")

// ParseRequest parses an add-checkpoint request body.
func ParseRequest(body []byte) (Request, error) {
	var r Request
	head, cp, ok := bytes.Cut(body, []byte("\n\n"))
	if !ok {
		return r, fmt.Errorf("%w: no empty line before the checkpoint", ErrMalformedRequest)
	}
	lines := strings.Split(string(head), "\n")
	old, ok := strings.CutPrefix(lines[0], "old ")
	if !ok {
		return r, fmt.Errorf("%w: first line is not \"old <size>\"", ErrMalformedRequest)
	}
	n, err := strconv.ParseUint(old, 10, 64)
	if err != nil || (len(old) > 1 && old[0] == '0') {
		return r, fmt.Errorf("%w: old size %q", ErrMalformedRequest, old)
	}
	r.OldSize = n
	if len(lines)-1 > MaxProofLines {
		return r, fmt.Errorf("%w: more than %d proof lines", ErrMalformedRequest, MaxProofLines)
	}
	for _, l := range lines[1:] {
		h, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(h) != 32 {
			return r, fmt.Errorf("%w: proof line %q is not a base64 hash", ErrMalformedRequest, l)
		}
		r.Proof = append(r.Proof, h)
	}
	r.Checkpoint = cp
	return r, nil
}

// ConflictError is a 409 Conflict answer: the witness's latest cosigned checkpoint has Size
// (the client's old size was wrong, or the checkpoint is a rollback or a fork).
type ConflictError struct{ Size uint64 }

func (e *ConflictError) Error() string {
	return fmt.Sprintf("witness conflict: its latest cosigned checkpoint has size %d", e.Size)
}

// StatusError is any other refusal of the witness.
type StatusError struct {
	Code int
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("witness refused the checkpoint: %d %s: %s", e.Code, http.StatusText(e.Code), strings.TrimSpace(e.Body))
}

// Client submits checkpoints to one witness.
type Client struct {
	// URL is the witness's submission prefix (add-checkpoint is appended).
	URL string
	// HTTP is the HTTP client. Default http.DefaultClient.
	HTTP *http.Client
}

// AddCheckpoint submits a checkpoint with its consistency proof from oldSize and returns the
// witness's cosignature lines. A 409 answer is a *ConflictError; other refusals are
// *StatusError.
func (c *Client) AddCheckpoint(ctx context.Context, r Request) ([]byte, error) {
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+"/add-checkpoint", bytes.NewReader(EncodeRequest(r)))
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", c.URL, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return body, nil
	case http.StatusConflict:
		if n, err := strconv.ParseUint(strings.TrimSpace(string(body)), 10, 64); err == nil {
			return nil, &ConflictError{Size: n}
		}
	}
	return nil, &StatusError{Code: resp.StatusCode, Body: string(body)}
}

// SignatureLines returns the note signature lines ("— name base64\n") of body.
func SignatureLines(body []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "— ") {
			out = append(out, l+"\n")
		}
	}
	return out
}
