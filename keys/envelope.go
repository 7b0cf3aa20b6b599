package keys

import (
	"container/list"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Envelope ciphertext layout (version 1):
//
//	0x01 | uvarint(len(wrapped)) | wrapped data key | 12-byte nonce | AES-256-GCM(dk, nonce, plaintext, 0x01||aad)
//
// The wrapped data key carries the wrapping key's version ("vault:v3:…"); re-wrapping
// replaces it without touching the sealed payload.
const envelopeV1 = 0x01

const maxWrappedLen = 4096

// Envelope is envelope encryption with one purpose's key ([PHIEncryption]): every value
// is sealed with AES-256-GCM under a data key, and the data key is stored wrapped by the
// backend next to it. A data key encrypts at most [Config.DataKeyMaxUses] values during
// at most [Config.DataKeyMaxAge]; unwrapped data keys are cached for decryption in a
// bounded LRU. It implements [Encrypter] and is safe for concurrent use.
type Envelope struct {
	r *Ring
	p Purpose

	genMu sync.Mutex // serialises data-key generation
	mu    sync.Mutex
	cur   *dataKey

	cmu   sync.Mutex
	cache map[string]*list.Element
	lru   *list.List
}

type dataKey struct {
	aead    cipher.AEAD
	wrapped []byte
	made    time.Time
	uses    int
}

type cacheEntry struct {
	wrapped string
	aead    cipher.AEAD
	added   time.Time
}

var _ Encrypter = (*Envelope)(nil)

// Envelope returns the envelope encrypter of an encryption purpose ([PHIEncryption]).
func (r *Ring) Envelope(p Purpose) (*Envelope, error) {
	if err := checkPurpose(p, func(a Algorithm) bool { return a == AES256GCM }, "encrypt"); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.envelopes[p]
	if e == nil {
		e = &Envelope{r: r, p: p, cache: map[string]*list.Element{}, lru: list.New()}
		r.envelopes[p] = e
	}
	return e, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: data key of %d bytes, want 32", ErrDecrypt, len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func (e *Envelope) dropCurrent() {
	e.mu.Lock()
	e.cur = nil
	e.mu.Unlock()
}

// take returns a data key for one encryption, reusing the current one within its bounds.
func (e *Envelope) take(ctx context.Context) (cipher.AEAD, []byte, error) {
	cfg := e.r.cfg
	for {
		e.mu.Lock()
		if k := e.cur; k != nil && k.uses < cfg.DataKeyMaxUses && cfg.Now().Sub(k.made) < cfg.DataKeyMaxAge {
			k.uses++
			e.mu.Unlock()
			return k.aead, k.wrapped, nil
		}
		e.cur = nil
		e.mu.Unlock()

		if cfg.DataKeyMaxUses == 1 { // no caching: a key per value
			return e.generate(ctx)
		}
		e.genMu.Lock()
		e.mu.Lock()
		fresh := e.cur != nil
		e.mu.Unlock()
		if fresh { // another goroutine made one meanwhile
			e.genMu.Unlock()
			continue
		}
		aead, wrapped, err := e.generate(ctx)
		if err != nil {
			e.genMu.Unlock()
			return nil, nil, err
		}
		e.mu.Lock()
		e.cur = &dataKey{aead: aead, wrapped: wrapped, made: cfg.Now(), uses: 1}
		e.mu.Unlock()
		e.genMu.Unlock()
		return aead, wrapped, nil
	}
}

func (e *Envelope) generate(ctx context.Context) (cipher.AEAD, []byte, error) {
	plain, wrapped, err := e.r.b.GenerateDataKey(ctx, string(e.p))
	if err != nil {
		return nil, nil, fmt.Errorf("keys: new data key for %s: %w", e.p, err)
	}
	defer clear(plain)
	if len(wrapped) == 0 || len(wrapped) > maxWrappedLen {
		return nil, nil, fmt.Errorf("keys: new data key for %s: wrapped key of %d bytes", e.p, len(wrapped))
	}
	aead, err := newAEAD(plain)
	if err != nil {
		return nil, nil, fmt.Errorf("keys: new data key for %s: %w", e.p, err)
	}
	e.remember(string(wrapped), aead)
	return aead, wrapped, nil
}

func gcmAAD(aad []byte) []byte {
	out := make([]byte, 1, 1+len(aad))
	out[0] = envelopeV1
	return append(out, aad...)
}

// Encrypt seals plaintext with aad (see [Encrypter]).
func (e *Envelope) Encrypt(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	aead, wrapped, err := e.take(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, 1+binary.MaxVarintLen64+len(wrapped)+12+len(plaintext)+16)
	out = append(out, envelopeV1)
	out = binary.AppendUvarint(out, uint64(len(wrapped)))
	out = append(out, wrapped...)
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("keys: nonce: %w", err)
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, gcmAAD(aad)), nil
}

type parsed struct {
	wrapped []byte
	nonce   []byte
	sealed  []byte
}

func parseEnvelope(ct []byte) (parsed, error) {
	if len(ct) < 1 || ct[0] != envelopeV1 {
		return parsed{}, fmt.Errorf("%w: unknown envelope format", ErrDecrypt)
	}
	n, k := binary.Uvarint(ct[1:])
	if k <= 0 || n == 0 || n > maxWrappedLen {
		return parsed{}, fmt.Errorf("%w: bad wrapped key length", ErrDecrypt)
	}
	rest := ct[1+k:]
	if uint64(len(rest)) < n+12+16 {
		return parsed{}, fmt.Errorf("%w: envelope too short", ErrDecrypt)
	}
	return parsed{wrapped: rest[:n], nonce: rest[n : n+12], sealed: rest[n+12:]}, nil
}

// CiphertextVersion returns the key version that wrapped the ciphertext's data key.
func CiphertextVersion(ciphertext []byte) (int, error) {
	p, err := parseEnvelope(ciphertext)
	if err != nil {
		return 0, err
	}
	return WrappedVersion(p.wrapped)
}

// Decrypt opens a ciphertext made by Encrypt (see [Encrypter]).
func (e *Envelope) Decrypt(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	out, err := e.DecryptBatch(ctx, []Sealed{{Ciphertext: ciphertext, AAD: aad}})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// Sealed is a ciphertext with its associated data.
type Sealed struct {
	Ciphertext []byte
	AAD        []byte
}

// DecryptBatch opens several ciphertexts, unwrapping all data keys it does not hold in
// one backend call. It fails as a whole if any item fails.
func (e *Envelope) DecryptBatch(ctx context.Context, items []Sealed) ([][]byte, error) {
	ps := make([]parsed, len(items))
	aeads := make([]cipher.AEAD, len(items))
	var missing [][]byte
	seen := map[string]bool{}
	for i, it := range items {
		p, err := parseEnvelope(it.Ciphertext)
		if err != nil {
			return nil, fmt.Errorf("keys: decrypt item %d: %w", i, err)
		}
		ps[i] = p
		if a := e.lookup(string(p.wrapped)); a != nil {
			aeads[i] = a
		} else if !seen[string(p.wrapped)] {
			seen[string(p.wrapped)] = true
			missing = append(missing, p.wrapped)
		}
	}
	if len(missing) > 0 {
		plains, err := e.r.b.UnwrapDataKeys(ctx, string(e.p), missing)
		if err != nil {
			return nil, fmt.Errorf("keys: unwrap data keys for %s: %w", e.p, err)
		}
		if len(plains) != len(missing) {
			return nil, fmt.Errorf("keys: unwrap data keys for %s: got %d keys for %d", e.p, len(plains), len(missing))
		}
		got := make(map[string]cipher.AEAD, len(missing))
		for j, pl := range plains {
			a, err := newAEAD(pl)
			clear(pl)
			if err != nil {
				return nil, fmt.Errorf("keys: unwrap data key for %s: %w", e.p, err)
			}
			got[string(missing[j])] = a
			e.remember(string(missing[j]), a)
		}
		for i := range aeads {
			if aeads[i] == nil {
				aeads[i] = got[string(ps[i].wrapped)]
			}
		}
	}
	out := make([][]byte, len(items))
	for i, p := range ps {
		pt, err := aeads[i].Open(nil, p.nonce, p.sealed, gcmAAD(items[i].AAD))
		if err != nil {
			return nil, fmt.Errorf("keys: decrypt item %d: %w", i, ErrDecrypt)
		}
		out[i] = pt
	}
	return out, nil
}

// Rewrap returns the ciphertext with its data key re-wrapped under the newest key
// version; the sealed payload is unchanged and the plaintext never leaves the backend.
func (e *Envelope) Rewrap(ctx context.Context, ciphertext []byte) ([]byte, error) {
	p, err := parseEnvelope(ciphertext)
	if err != nil {
		return nil, fmt.Errorf("keys: rewrap: %w", err)
	}
	nw, err := e.r.b.RewrapDataKey(ctx, string(e.p), p.wrapped)
	if err != nil {
		return nil, fmt.Errorf("keys: rewrap data key for %s: %w", e.p, err)
	}
	out := make([]byte, 0, len(ciphertext)+len(nw)-len(p.wrapped)+4)
	out = append(out, envelopeV1)
	out = binary.AppendUvarint(out, uint64(len(nw)))
	out = append(out, nw...)
	out = append(out, p.nonce...)
	return append(out, p.sealed...), nil
}

// rewrapShared is Rewrap with a memo of wrapped keys already re-wrapped in this run.
func (e *Envelope) rewrapShared(ctx context.Context, ciphertext []byte, memo map[string][]byte) ([]byte, error) {
	p, err := parseEnvelope(ciphertext)
	if err != nil {
		return nil, err
	}
	nw, ok := memo[string(p.wrapped)]
	if !ok {
		if nw, err = e.r.b.RewrapDataKey(ctx, string(e.p), p.wrapped); err != nil {
			return nil, err
		}
		if len(memo) >= 65536 {
			clear(memo)
		}
		memo[string(p.wrapped)] = nw
	}
	out := make([]byte, 0, len(ciphertext)+len(nw)-len(p.wrapped)+4)
	out = append(out, envelopeV1)
	out = binary.AppendUvarint(out, uint64(len(nw)))
	out = append(out, nw...)
	out = append(out, p.nonce...)
	return append(out, p.sealed...), nil
}

func (e *Envelope) lookup(wrapped string) cipher.AEAD {
	e.cmu.Lock()
	defer e.cmu.Unlock()
	el, ok := e.cache[wrapped]
	if !ok {
		return nil
	}
	ce := el.Value.(*cacheEntry)
	if e.r.cfg.Now().Sub(ce.added) >= e.r.cfg.UnwrapCacheTTL {
		e.lru.Remove(el)
		delete(e.cache, wrapped)
		return nil
	}
	e.lru.MoveToFront(el)
	return ce.aead
}

func (e *Envelope) remember(wrapped string, a cipher.AEAD) {
	size := e.r.cfg.UnwrapCacheSize
	if size < 0 {
		return
	}
	e.cmu.Lock()
	defer e.cmu.Unlock()
	if el, ok := e.cache[wrapped]; ok {
		e.lru.MoveToFront(el)
		return
	}
	e.cache[wrapped] = e.lru.PushFront(&cacheEntry{wrapped: wrapped, aead: a, added: e.r.cfg.Now()})
	for e.lru.Len() > size {
		el := e.lru.Back()
		e.lru.Remove(el)
		delete(e.cache, el.Value.(*cacheEntry).wrapped)
	}
}

// CachedDataKeys returns how many unwrapped data keys are cached (for tests and metrics).
func (e *Envelope) CachedDataKeys() int {
	e.cmu.Lock()
	defer e.cmu.Unlock()
	return e.lru.Len()
}

// RewrapStore is owned by whoever stores envelope ciphertexts (e.g. the clinical core's
// encrypted patient fields); [RewrapAll] walks it after a rotation.
type RewrapStore interface {
	// NextSealed returns up to limit stored ciphertexts with an id greater than after, in
	// increasing id order; an empty slice (not an error) at the end.
	NextSealed(ctx context.Context, after string, limit int) ([]StoredCiphertext, error)
	// ReplaceSealed stores each New ciphertext where the stored one still equals Old
	// (compare-and-swap, so a concurrent write is not undone).
	ReplaceSealed(ctx context.Context, items []StoredCiphertext) error
}

// StoredCiphertext is one stored envelope ciphertext.
type StoredCiphertext struct {
	ID  string
	Old []byte
	New []byte
}

// RewrapAll re-wraps, batch by batch, every ciphertext in store whose data key is older
// than the newest key version, reports the count ([OpRewrap]) and returns it. Reads and
// writes keep working meanwhile: old versions still decrypt until every ciphertext is
// re-wrapped, so a rotation needs no downtime.
func (e *Envelope) RewrapAll(ctx context.Context, store RewrapStore, batch int) (int, error) {
	if batch <= 0 {
		batch = 500
	}
	ki, err := e.r.b.Key(ctx, string(e.p))
	if err != nil {
		return 0, fmt.Errorf("keys: rewrap %s: %w", e.p, err)
	}
	total := 0
	after := ""
	// Values sealed under the same cached data key share its wrapping: re-wrap each wrapped
	// key once (bounded map; it only saves backend calls).
	rewrapped := map[string][]byte{}
	for {
		items, err := store.NextSealed(ctx, after, batch)
		if err != nil {
			return total, fmt.Errorf("keys: rewrap %s: read after %q: %w", e.p, after, err)
		}
		if len(items) == 0 {
			break
		}
		var todo []StoredCiphertext
		for _, it := range items {
			v, err := CiphertextVersion(it.Old)
			if err != nil {
				return total, fmt.Errorf("keys: rewrap %s: item %s: %w", e.p, it.ID, err)
			}
			if v >= ki.Latest {
				continue
			}
			nw, err := e.rewrapShared(ctx, it.Old, rewrapped)
			if err != nil {
				return total, fmt.Errorf("keys: rewrap %s: item %s: %w", e.p, it.ID, err)
			}
			it.New = nw
			todo = append(todo, it)
		}
		if len(todo) > 0 {
			if err := store.ReplaceSealed(ctx, todo); err != nil {
				return total, fmt.Errorf("keys: rewrap %s: store: %w", e.p, err)
			}
			total += len(todo)
		}
		after = items[len(items)-1].ID
	}
	if err := e.r.report(ctx, Operation{Kind: OpRewrap, Purpose: e.p, KeyID: KeyID(e.p, ki.Latest), Count: total}); err != nil {
		return total, err
	}
	return total, nil
}

var errClosed = errors.New("keys: backend closed")
