package sdk

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"github.com/vigilhealth/vigil/devices/envelope"
)

// item is one buffered upload: the samples to send and, once signed, the sequence number and
// the exact envelope bytes (re-sent unchanged on every retry, so that Vigil recognizes a
// re-send of an upload it already stored and answers with the original receipt).
type item struct {
	N       uint64            `cbor:"n"`
	Samples []envelope.Sample `cbor:"samples"`
	Seq     uint64            `cbor:"seq,omitempty"`
	Signed  []byte            `cbor:"signed,omitempty"`
}

// state is the buffer's counters: the last sequence number ever signed (written before an
// envelope carrying it leaves the device) and the number of the next item.
type state struct {
	LastSeq uint64 `cbor:"last_seq"`
	NextN   uint64 `cbor:"next_n"`
}

// store keeps the buffer: in memory, or in a directory that survives restarts.
type store interface {
	load() (state, []item, error)
	putState(state) error
	put(it item) error
	remove(n uint64) error
	quarantine(it item, reason string) error
	// The key rotation sent and not yet answered (nil when none).
	getRotation() (*pendingRotation, error)
	putRotation(*pendingRotation) error
	dropRotation() error
}

// pendingRotation is a key rotation whose answer has not been had: the new key and the exact
// request sent. It is stored before the request leaves the device, so that a lost answer or
// a crash never leaves Vigil holding a key the device has forgotten: the next RotateKey
// sends the same request again (Vigil answers a rotation already applied with the same key
// version) instead of making another key.
type pendingRotation struct {
	Device      string `cbor:"device"`
	FromVersion uint64 `cbor:"from_version"`
	Seed        []byte `cbor:"ed25519_seed"`
	Request     []byte `cbor:"request"`
}

type memStore struct {
	st    state
	items map[uint64]item
	rot   *pendingRotation
}

func newMemStore() *memStore { return &memStore{items: map[uint64]item{}} }

func (m *memStore) load() (state, []item, error) {
	out := make([]item, 0, len(m.items))
	for _, it := range m.items {
		out = append(out, it)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return m.st, out, nil
}
func (m *memStore) putState(s state) error                 { m.st = s; return nil }
func (m *memStore) put(it item) error                      { m.items[it.N] = it; return nil }
func (m *memStore) remove(n uint64) error                  { delete(m.items, n); return nil }
func (m *memStore) quarantine(it item, _ string) error     { delete(m.items, it.N); return nil }
func (m *memStore) getRotation() (*pendingRotation, error) { return m.rot, nil }
func (m *memStore) putRotation(r *pendingRotation) error   { m.rot = r; return nil }
func (m *memStore) dropRotation() error                    { m.rot = nil; return nil }

// dirStore layout:
//
//	<dir>/state.cbor           the counters
//	<dir>/queue/<n>.cbor       one buffered upload per file, n zero-padded to 20 digits
//	<dir>/rejected/<n>.cbor    uploads Vigil refused for good, kept for inspection
//	<dir>/rejected/<n>.reason  why
//	<dir>/rotation.cbor        the key rotation sent and not yet answered (secret: mode 0600)
//
// Every write is atomic (temporary file, fsync, rename, fsync of the directory).
type dirStore struct{ dir string }

func newDirStore(dir string) (*dirStore, error) {
	for _, d := range []string{dir, filepath.Join(dir, "queue"), filepath.Join(dir, "rejected")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("buffer directory: %w", err)
		}
	}
	return &dirStore{dir: dir}, nil
}

func itemName(n uint64) string { return fmt.Sprintf("%020d.cbor", n) }

func (d *dirStore) load() (state, []item, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(d.dir, "state.cbor"))
	switch {
	case err == nil:
		if err := cbor.Unmarshal(b, &st); err != nil {
			return st, nil, fmt.Errorf("buffer state: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return st, nil, fmt.Errorf("buffer state: %w", err)
	}
	ents, err := os.ReadDir(filepath.Join(d.dir, "queue"))
	if err != nil {
		return st, nil, fmt.Errorf("buffer queue: %w", err)
	}
	var items []item
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".cbor") || strings.HasPrefix(name, ".") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(name, ".cbor"), 10, 64)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d.dir, "queue", name))
		if err != nil {
			return st, nil, fmt.Errorf("buffer item %s: %w", name, err)
		}
		var it item
		if err := cbor.Unmarshal(b, &it); err != nil || it.N != n {
			return st, nil, fmt.Errorf("buffer item %s is damaged: %v", name, err)
		}
		items = append(items, it)
		// The counters are written before the items that use them, but never trust that
		// blindly: a buffer must not reuse a number or a sequence number.
		st.NextN = max(st.NextN, n+1)
		st.LastSeq = max(st.LastSeq, it.Seq)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].N < items[j].N })
	return st, items, nil
}

func (d *dirStore) putState(s state) error {
	b, err := envelope.Canonical(&s)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(d.dir, "state.cbor"), b, 0o600); err != nil {
		return fmt.Errorf("buffer state: %w", err)
	}
	return nil
}

func (d *dirStore) put(it item) error {
	b, err := envelope.Canonical(&it)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(d.dir, "queue", itemName(it.N)), b, 0o600); err != nil {
		return fmt.Errorf("buffer item: %w", err)
	}
	return nil
}

func (d *dirStore) remove(n uint64) error {
	if err := os.Remove(filepath.Join(d.dir, "queue", itemName(n))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("buffer remove: %w", err)
	}
	return syncDir(filepath.Join(d.dir, "queue"))
}

func (d *dirStore) quarantine(it item, reason string) error {
	rej := filepath.Join(d.dir, "rejected")
	if err := writeFileAtomic(filepath.Join(rej, strings.TrimSuffix(itemName(it.N), ".cbor")+".reason"), []byte(reason+"\n"), 0o600); err != nil {
		return fmt.Errorf("buffer quarantine: %w", err)
	}
	if err := os.Rename(filepath.Join(d.dir, "queue", itemName(it.N)), filepath.Join(rej, itemName(it.N))); err != nil {
		return fmt.Errorf("buffer quarantine: %w", err)
	}
	if err := syncDir(rej); err != nil {
		return err
	}
	return syncDir(filepath.Join(d.dir, "queue"))
}

func (d *dirStore) getRotation() (*pendingRotation, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, "rotation.cbor"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pending rotation: %w", err)
	}
	var r pendingRotation
	if err := cbor.Unmarshal(b, &r); err != nil || len(r.Seed) != ed25519.SeedSize || len(r.Request) == 0 {
		return nil, fmt.Errorf("pending rotation %s is damaged (keep it: it holds a key Vigil may have registered): %v",
			filepath.Join(d.dir, "rotation.cbor"), err)
	}
	return &r, nil
}

func (d *dirStore) putRotation(r *pendingRotation) error {
	b, err := envelope.Canonical(r)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(d.dir, "rotation.cbor"), b, 0o600); err != nil {
		return fmt.Errorf("pending rotation: %w", err)
	}
	return nil
}

func (d *dirStore) dropRotation() error {
	if err := os.Remove(filepath.Join(d.dir, "rotation.cbor")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pending rotation: %w", err)
	}
	return syncDir(d.dir)
}
