package witness

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Config configures a Witness.
type Config struct {
	// Cosigner signs the cosignatures. Required.
	Cosigner *Cosigner
	// Logs maps each log's origin to the verifier key of its checkpoints (a signed-note
	// Ed25519 key, as `vigil audit verify` prints it). Required.
	Logs map[string]string
	// StateFile keeps the newest cosigned checkpoint of each log (JSON, replaced atomically
	// before every answer). Required.
	StateFile string
}

// Witness is a C2SP tlog-witness: it cosigns a log's checkpoint only when it is a
// consistent extension of the newest one it cosigned before, and remembers that one across
// restarts. It refuses a smaller or forked checkpoint (409), an unproven one (422), a badly
// signed one (403) and an unknown log (404). It is an http.Handler for POST
// <prefix>/add-checkpoint.
type Witness struct {
	cfg   Config
	mu    sync.Mutex
	state map[string]LogState
}

// LogState is the newest checkpoint the witness cosigned for one log.
type LogState struct {
	Size       uint64 `json:"size"`
	Root       []byte `json:"root"`
	Checkpoint string `json:"checkpoint"`
}

// New loads the state file (a missing one is an empty state) and returns the witness.
func New(cfg Config) (*Witness, error) {
	if cfg.Cosigner == nil || len(cfg.Logs) == 0 || cfg.StateFile == "" {
		return nil, errors.New("witness: Cosigner, Logs and StateFile are required")
	}
	for origin, vkey := range cfg.Logs {
		if _, err := note.NewVerifier(vkey); err != nil {
			return nil, fmt.Errorf("witness: log %s: %w", origin, err)
		}
	}
	w := &Witness{cfg: cfg, state: map[string]LogState{}}
	b, err := os.ReadFile(cfg.StateFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("witness: state: %w", err)
	default:
		if err := json.Unmarshal(b, &w.state); err != nil {
			return nil, fmt.Errorf("witness: state file %s: %w", cfg.StateFile, err)
		}
	}
	return w, nil
}

// Latest returns the newest checkpoint cosigned for origin.
func (w *Witness) Latest(origin string) (LogState, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.state[origin]
	return s, ok
}

func (w *Witness) save() error {
	b, err := json.MarshalIndent(w.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := w.cfg.StateFile + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, w.cfg.StateFile); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(w.cfg.StateFile)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ServeHTTP implements POST <prefix>/add-checkpoint.
func (w *Witness) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/add-checkpoint") {
		http.NotFound(rw, r)
		return
	}
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(rw, "request too large or unreadable", http.StatusBadRequest)
		return
	}
	sigs, size, code, msg := w.add(body)
	switch {
	case code == http.StatusConflict:
		rw.Header().Set("Content-Type", ContentTypeSize)
		rw.WriteHeader(code)
		fmt.Fprintf(rw, "%d\n", size)
	case code != http.StatusOK:
		http.Error(rw, msg, code)
	default:
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(rw, sigs)
	}
}

// add checks and cosigns one request; it returns the signature lines, or an HTTP status
// (with the witness's size for a conflict).
func (w *Witness) add(body []byte) (sigs string, size uint64, code int, msg string) {
	req, err := ParseRequest(body)
	if err != nil {
		return "", 0, http.StatusBadRequest, err.Error()
	}
	origin, _, _ := strings.Cut(string(req.Checkpoint), "\n")
	vkey, ok := w.cfg.Logs[origin]
	if !ok {
		return "", 0, http.StatusNotFound, "unknown log"
	}
	v, _ := note.NewVerifier(vkey)
	n, err := note.Open(req.Checkpoint, note.VerifierList(v))
	if err != nil {
		return "", 0, http.StatusForbidden, "no valid log signature"
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != origin {
		return "", 0, http.StatusBadRequest, "not a checkpoint"
	}
	newSize, err := strconv.ParseUint(lines[1], 10, 64)
	root, rerr := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || rerr != nil || len(root) != 32 {
		return "", 0, http.StatusBadRequest, "not a checkpoint"
	}
	if req.OldSize > newSize {
		return "", 0, http.StatusBadRequest, "old size exceeds the checkpoint size"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	cur := w.state[origin]
	if req.OldSize != cur.Size {
		return "", cur.Size, http.StatusConflict, ""
	}
	switch {
	case req.OldSize == 0:
		if len(req.Proof) != 0 {
			return "", 0, http.StatusUnprocessableEntity, "the proof from size 0 must be empty"
		}
	case req.OldSize == newSize:
		if string(root) != string(cur.Root) {
			return "", cur.Size, http.StatusConflict, ""
		}
	default:
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, req.OldSize, newSize, req.Proof, cur.Root, root); err != nil {
			return "", 0, http.StatusUnprocessableEntity, "consistency proof does not verify"
		}
	}
	signed, err := note.Sign(&note.Note{Text: n.Text}, w.cfg.Cosigner)
	if err != nil {
		return "", 0, http.StatusInternalServerError, "cosign failed"
	}
	prev := cur
	w.state[origin] = LogState{Size: newSize, Root: root, Checkpoint: string(req.Checkpoint)}
	if err := w.save(); err != nil {
		w.state[origin] = prev
		return "", 0, http.StatusInternalServerError, "could not persist the state"
	}
	return strings.Join(SignatureLines(signed), ""), 0, http.StatusOK, ""
}
