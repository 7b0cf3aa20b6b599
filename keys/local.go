package keys

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"golang.org/x/crypto/scrypt"
)

// LocalWarning is what the binary logs when it runs on the local key ring.
const LocalWarning = "keys: using the local key ring in the data directory; NOT FOR PRODUCTION, use Vault Transit (keys.Vault)"

// LocalFile is the name of the sealed key-ring file in [LocalConfig.Dir].
const LocalFile = "keyring.sealed"

const localFormat = "vigil-keyring-v1"

// LocalConfig configures [NewLocal].
type LocalConfig struct {
	// Dir is the directory of the key ring (required); created 0700 if missing. The key
	// ring is Dir/keyring.sealed, mode 0600.
	Dir string
	// Passphrase seals the key ring (required; from env or a file, never a flag).
	Passphrase []byte
	// ScryptN is the scrypt cost for a new key ring (default 1<<15; r=8, p=1). An existing
	// key ring keeps the parameters it was sealed with.
	ScryptN int
	// Rand is the randomness source (default crypto/rand.Reader).
	Rand io.Reader
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Local is the local key ring: keys kept in one passphrase-sealed file (scrypt +
// AES-256-GCM) in the data directory. It is the default of `vigil demo` and of tests
// and is not for production: the keys are in the process's memory and on its disk.
// Several processes may share the directory: writes take a file lock and every
// operation reloads the file when it changed.
type Local struct {
	cfg  LocalConfig
	path string

	mu      sync.Mutex
	closed  bool
	kdf     localKDF
	kek     []byte                   // derived from the passphrase
	signers map[string]crypto.Signer // parsed private keys by "name/version", reset on reload
	keys    map[string]*localKey
	modTime time.Time
	size    int64
}

type localKDF struct {
	Name string `json:"name"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
	Salt []byte `json:"salt"`
}

type localFile struct {
	Format     string   `json:"format"`
	KDF        localKDF `json:"kdf"`
	Nonce      []byte   `json:"nonce"`
	Ciphertext []byte   `json:"ciphertext"`
}

type localKey struct {
	Alg      Algorithm         `json:"alg"`
	Min      int               `json:"min"`
	Versions []localKeyVersion `json:"versions"`
}

type localKeyVersion struct {
	V       int       `json:"v"`
	Created time.Time `json:"created"`
	Secret  []byte    `json:"secret"`
}

var _ Backend = (*Local)(nil)

// NewLocal opens the key ring in cfg.Dir, creating an empty one if there is none. A
// wrong passphrase gives [ErrWrongPassphrase].
func NewLocal(cfg LocalConfig) (*Local, error) {
	if cfg.Dir == "" {
		return nil, errors.New("keys: LocalConfig.Dir is required")
	}
	if len(cfg.Passphrase) == 0 {
		return nil, errors.New("keys: LocalConfig.Passphrase is required")
	}
	if cfg.ScryptN == 0 {
		cfg.ScryptN = 1 << 15
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: local key ring dir: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil { // an existing directory too
		return nil, fmt.Errorf("keys: local key ring dir: %w", err)
	}
	l := &Local{cfg: cfg, path: filepath.Join(cfg.Dir, LocalFile)}
	unlock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(l.path); errors.Is(err, os.ErrNotExist) {
		salt := make([]byte, 16)
		if _, err := io.ReadFull(cfg.Rand, salt); err != nil {
			return nil, fmt.Errorf("keys: salt: %w", err)
		}
		l.kdf = localKDF{Name: "scrypt", N: cfg.ScryptN, R: 8, P: 1, Salt: salt}
		if l.kek, err = l.kdf.derive(cfg.Passphrase); err != nil {
			return nil, err
		}
		l.keys = map[string]*localKey{}
		if err := l.saveLocked(); err != nil {
			return nil, err
		}
		return l, nil
	}
	if err := l.loadLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

func (k localKDF) derive(pass []byte) ([]byte, error) {
	if k.Name != "scrypt" || k.N < 2 || k.N > 1<<22 || k.R < 1 || k.R > 32 || k.P < 1 || k.P > 16 || len(k.Salt) < 16 {
		return nil, &BackendError{Backend: "local", Op: "open", Err: fmt.Errorf("%w: unsupported key derivation %q N=%d r=%d p=%d", ErrWrongPassphrase, k.Name, k.N, k.R, k.P)}
	}
	key, err := scrypt.Key(pass, k.Salt, k.N, k.R, k.P, 32)
	if err != nil {
		return nil, fmt.Errorf("keys: local key ring kdf: %w", err)
	}
	return key, nil
}

func gcmOf(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// loadLocked reads and opens the file if it changed since the last load. l.mu held.
func (l *Local) loadLocked() error {
	st, err := os.Stat(l.path)
	if err != nil {
		return &BackendError{Backend: "local", Op: "open", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)}
	}
	if l.keys != nil && st.ModTime().Equal(l.modTime) && st.Size() == l.size {
		return nil
	}
	raw, err := os.ReadFile(l.path)
	if err != nil {
		return &BackendError{Backend: "local", Op: "open", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)}
	}
	var f localFile
	if err := json.Unmarshal(raw, &f); err != nil || f.Format != localFormat {
		return &BackendError{Backend: "local", Op: "open", Err: errors.New("not a Vigil key ring file")}
	}
	if l.kek == nil || !hmac.Equal(f.KDF.Salt, l.kdf.Salt) || f.KDF.Name != l.kdf.Name || f.KDF.N != l.kdf.N || f.KDF.R != l.kdf.R || f.KDF.P != l.kdf.P {
		kek, err := f.KDF.derive(l.cfg.Passphrase)
		if err != nil {
			return err
		}
		l.kek, l.kdf = kek, f.KDF
	}
	g, err := gcmOf(l.kek)
	if err != nil {
		return err
	}
	if len(f.Nonce) != g.NonceSize() {
		return &BackendError{Backend: "local", Op: "open", Err: ErrWrongPassphrase}
	}
	plain, err := g.Open(nil, f.Nonce, f.Ciphertext, []byte(localFormat))
	if err != nil {
		l.kek = nil
		return &BackendError{Backend: "local", Op: "open", Err: ErrWrongPassphrase}
	}
	keys := map[string]*localKey{}
	if err := json.Unmarshal(plain, &keys); err != nil {
		return &BackendError{Backend: "local", Op: "open", Err: fmt.Errorf("corrupt key ring: %v", err)}
	}
	clear(plain)
	l.keys, l.modTime, l.size = keys, st.ModTime(), st.Size()
	l.signers = nil
	return nil
}

// saveLocked seals and writes the key ring atomically (temp file, fsync, rename).
func (l *Local) saveLocked() error {
	plain, err := json.Marshal(l.keys)
	if err != nil {
		return err
	}
	defer clear(plain)
	g, err := gcmOf(l.kek)
	if err != nil {
		return err
	}
	nonce := make([]byte, g.NonceSize())
	if _, err := io.ReadFull(l.cfg.Rand, nonce); err != nil {
		return fmt.Errorf("keys: nonce: %w", err)
	}
	out, err := json.MarshalIndent(localFile{Format: localFormat, KDF: l.kdf, Nonce: nonce, Ciphertext: g.Seal(nil, nonce, plain, []byte(localFormat))}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(l.cfg.Dir, LocalFile+".tmp*")
	if err != nil {
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	if err := os.Rename(tmp.Name(), l.path); err != nil {
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	st, err := os.Stat(l.path)
	if err != nil {
		return fmt.Errorf("keys: write key ring: %w", err)
	}
	l.modTime, l.size = st.ModTime(), st.Size()
	return nil
}

// read runs fn with the key ring loaded.
func (l *Local) read(op string, fn func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return &BackendError{Backend: "local", Op: op, Err: errClosed}
	}
	if err := l.loadLocked(); err != nil {
		return err
	}
	return fn()
}

// write runs fn under the directory lock with the freshest key ring and saves it.
func (l *Local) write(op string, fn func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return &BackendError{Backend: "local", Op: op, Err: errClosed}
	}
	unlock, err := lockDir(l.cfg.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.loadLocked(); err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	return l.saveLocked()
}

func (l *Local) newSecret(alg Algorithm) ([]byte, error) {
	switch alg {
	case Ed25519:
		seed := make([]byte, ed25519.SeedSize)
		_, err := io.ReadFull(l.cfg.Rand, seed)
		return seed, err
	case ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), l.cfg.Rand)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case AES256GCM, HMACSHA256:
		b := make([]byte, 32)
		_, err := io.ReadFull(l.cfg.Rand, b)
		return b, err
	}
	return nil, fmt.Errorf("keys: unknown algorithm %q", alg)
}

func notFound(op, name string) error {
	return &BackendError{Backend: "local", Op: op, Key: name, Err: ErrKeyNotFound}
}

// CreateKey implements [Backend].
func (l *Local) CreateKey(ctx context.Context, name string, alg Algorithm) (bool, error) {
	created := false
	err := l.write("create", func() error {
		if k, ok := l.keys[name]; ok {
			if k.Alg != alg {
				return &BackendError{Backend: "local", Op: "create", Key: name, Err: fmt.Errorf("exists with algorithm %s, want %s", k.Alg, alg)}
			}
			return nil
		}
		s, err := l.newSecret(alg)
		if err != nil {
			return err
		}
		l.keys[name] = &localKey{Alg: alg, Min: 1, Versions: []localKeyVersion{{V: 1, Created: l.cfg.Now().UTC(), Secret: s}}}
		created = true
		return nil
	})
	return created, err
}

// Rotate implements [Backend].
func (l *Local) Rotate(ctx context.Context, name string) (int, error) {
	var v int
	err := l.write("rotate", func() error {
		k, ok := l.keys[name]
		if !ok {
			return notFound("rotate", name)
		}
		s, err := l.newSecret(k.Alg)
		if err != nil {
			return err
		}
		v = k.Versions[len(k.Versions)-1].V + 1
		k.Versions = append(k.Versions, localKeyVersion{V: v, Created: l.cfg.Now().UTC(), Secret: s})
		return nil
	})
	return v, err
}

func (k *localKey) version(v int) (*localKeyVersion, bool) {
	if v == 0 {
		return &k.Versions[len(k.Versions)-1], true
	}
	if v < k.Min {
		return nil, false
	}
	for i := range k.Versions {
		if k.Versions[i].V == v {
			return &k.Versions[i], true
		}
	}
	return nil, false
}

func publicOf(alg Algorithm, secret []byte) (crypto.PublicKey, crypto.Signer, error) {
	switch alg {
	case Ed25519:
		if len(secret) != ed25519.SeedSize {
			return nil, nil, errors.New("bad ed25519 seed")
		}
		k := ed25519.NewKeyFromSeed(secret)
		return k.Public(), k, nil
	case ECDSAP256:
		k, err := x509.ParsePKCS8PrivateKey(secret)
		if err != nil {
			return nil, nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, errors.New("not an ECDSA key")
		}
		return &ek.PublicKey, ek, nil
	}
	return nil, nil, nil
}

// Key implements [Backend].
func (l *Local) Key(ctx context.Context, name string) (KeyInfo, error) {
	var ki KeyInfo
	err := l.read("read", func() error {
		k, ok := l.keys[name]
		if !ok {
			return notFound("read", name)
		}
		ki = KeyInfo{Name: name, Algorithm: k.Alg, Latest: k.Versions[len(k.Versions)-1].V, MinDecrypt: k.Min}
		if k.Alg.Signs() {
			ki.Public = map[int]crypto.PublicKey{}
			for _, v := range k.Versions {
				if v.V < k.Min {
					continue
				}
				pub, _, err := publicOf(k.Alg, v.Secret)
				if err != nil {
					return fmt.Errorf("keys: local key %s v%d: %w", name, v.V, err)
				}
				ki.Public[v.V] = pub
			}
		}
		return nil
	})
	return ki, err
}

// secret returns a copy of the key version's secret.
func (l *Local) secret(op, name string, version int) (Algorithm, int, []byte, error) {
	var alg Algorithm
	var v int
	var s []byte
	err := l.read(op, func() error {
		k, ok := l.keys[name]
		if !ok {
			return notFound(op, name)
		}
		kv, ok := k.version(version)
		if !ok {
			return &BackendError{Backend: "local", Op: op, Key: name, Err: fmt.Errorf("%w: version %d", ErrKeyNotFound, version)}
		}
		alg, v, s = k.Alg, kv.V, append([]byte(nil), kv.Secret...)
		return nil
	})
	return alg, v, s, err
}

// signer returns the parsed private key of a version of a signing key (cached).
func (l *Local) signer(name string, version int) (crypto.Signer, int, error) {
	var signer crypto.Signer
	var v int
	err := l.read("sign", func() error {
		k, ok := l.keys[name]
		if !ok {
			return notFound("sign", name)
		}
		kv, ok := k.version(version)
		if !ok {
			return &BackendError{Backend: "local", Op: "sign", Key: name, Err: fmt.Errorf("%w: version %d", ErrKeyNotFound, version)}
		}
		if !k.Alg.Signs() {
			return &BackendError{Backend: "local", Op: "sign", Key: name, Err: ErrWrongPurpose}
		}
		v = kv.V
		id := name + "/" + strconv.Itoa(v)
		if signer = l.signers[id]; signer != nil {
			return nil
		}
		_, sg, err := publicOf(k.Alg, kv.Secret)
		if err != nil {
			return err
		}
		if l.signers == nil {
			l.signers = map[string]crypto.Signer{}
		}
		l.signers[id], signer = sg, sg
		return nil
	})
	return signer, v, err
}

// Sign implements [Backend].
func (l *Local) Sign(ctx context.Context, name string, version int, msgs [][]byte) ([][]byte, int, error) {
	signer, v, err := l.signer(name, version)
	if err != nil {
		return nil, 0, err
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		switch k := signer.(type) {
		case ed25519.PrivateKey:
			out[i] = signEd25519(k, m)
		case *ecdsa.PrivateKey:
			d := sha256.Sum256(m)
			if out[i], err = ecdsa.SignASN1(l.cfg.Rand, k, d[:]); err != nil {
				return nil, 0, err
			}
		}
	}
	return out, v, nil
}

// SignDigests implements [Backend]: ECDSA over the given SHA-256 digests.
func (l *Local) SignDigests(ctx context.Context, name string, version int, digests [][]byte) ([][]byte, int, error) {
	if err := checkDigests(digests); err != nil {
		return nil, 0, &BackendError{Backend: "local", Op: "sign", Key: name, Err: err}
	}
	signer, v, err := l.signer(name, version)
	if err != nil {
		return nil, 0, err
	}
	k, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, 0, &BackendError{Backend: "local", Op: "sign", Key: name, Err: fmt.Errorf("%w: only ECDSA keys sign digests", ErrWrongPurpose)}
	}
	out := make([][]byte, len(digests))
	for i, d := range digests {
		if out[i], err = ecdsa.SignASN1(l.cfg.Rand, k, d); err != nil {
			return nil, 0, err
		}
	}
	return out, v, nil
}

// signEd25519 signs with curve25519-voi, which takes about half the time of crypto/ed25519
// on the reference machine (BenchmarkSignEd25519, docs/benchmarks.md#keys). Ed25519 signing is deterministic
// (RFC 8032 §5.1.6), so the signature is byte for byte the one crypto/ed25519.Sign makes
// (TestSignEd25519MatchesStdlib).
func signEd25519(k ed25519.PrivateKey, m []byte) []byte {
	return voi.Sign(voi.PrivateKey(k), m)
}

// inProcess marks the local backend: its signatures are made here with a key whose public
// key is derived here, so the ring need not verify them again.
func (l *Local) inProcess() bool { return true }

// MAC implements [Backend].
func (l *Local) MAC(ctx context.Context, name string, version int, msg []byte) ([]byte, int, error) {
	alg, v, s, err := l.secret("hmac", name, version)
	if err != nil {
		return nil, 0, err
	}
	defer clear(s)
	if alg != HMACSHA256 {
		return nil, 0, &BackendError{Backend: "local", Op: "hmac", Key: name, Err: ErrWrongPurpose}
	}
	m := hmac.New(sha256.New, s)
	m.Write(msg)
	return m.Sum(nil), v, nil
}

func wrapAAD(name string) []byte { return []byte("vigil/local-wrap/v1\x00" + name) }

// GenerateDataKey implements [Backend].
func (l *Local) GenerateDataKey(ctx context.Context, name string) ([]byte, []byte, error) {
	dk := make([]byte, 32)
	if _, err := io.ReadFull(l.cfg.Rand, dk); err != nil {
		return nil, nil, err
	}
	w, err := l.wrap("datakey", name, dk)
	if err != nil {
		return nil, nil, err
	}
	return dk, w, nil
}

func (l *Local) wrap(op, name string, dk []byte) ([]byte, error) {
	alg, v, s, err := l.secret(op, name, 0)
	if err != nil {
		return nil, err
	}
	defer clear(s)
	if alg != AES256GCM {
		return nil, &BackendError{Backend: "local", Op: op, Key: name, Err: ErrWrongPurpose}
	}
	g, err := gcmOf(s)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize())
	if _, err := io.ReadFull(l.cfg.Rand, nonce); err != nil {
		return nil, err
	}
	sealed := g.Seal(nonce, nonce, dk, wrapAAD(name))
	return []byte("local:v" + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(sealed)), nil
}

func (l *Local) unwrap(name string, wrapped []byte) ([]byte, error) {
	bad := func(why string) error {
		return &BackendError{Backend: "local", Op: "unwrap", Key: name, Err: fmt.Errorf("%w: %s", ErrDecrypt, why)}
	}
	if !strings.HasPrefix(string(wrapped), "local:v") {
		return nil, bad("not a local wrapped key")
	}
	v, err := WrappedVersion(wrapped)
	if err != nil {
		return nil, bad("no version")
	}
	enc := string(wrapped[len("local:v"+strconv.Itoa(v)+":"):])
	sealed, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, bad("bad encoding")
	}
	alg, _, s, err := l.secret("unwrap", name, v)
	if err != nil {
		return nil, err
	}
	defer clear(s)
	if alg != AES256GCM {
		return nil, &BackendError{Backend: "local", Op: "unwrap", Key: name, Err: ErrWrongPurpose}
	}
	g, err := gcmOf(s)
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize() {
		return nil, bad("too short")
	}
	dk, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], wrapAAD(name))
	if err != nil {
		return nil, bad("authentication failed")
	}
	return dk, nil
}

// UnwrapDataKeys implements [Backend].
func (l *Local) UnwrapDataKeys(ctx context.Context, name string, wrapped [][]byte) ([][]byte, error) {
	out := make([][]byte, len(wrapped))
	for i, w := range wrapped {
		dk, err := l.unwrap(name, w)
		if err != nil {
			return nil, err
		}
		out[i] = dk
	}
	return out, nil
}

// RewrapDataKey implements [Backend].
func (l *Local) RewrapDataKey(ctx context.Context, name string, wrapped []byte) ([]byte, error) {
	dk, err := l.unwrap(name, wrapped)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	return l.wrap("rewrap", name, dk)
}

// Close implements [Backend]; it forgets the keys held in memory.
func (l *Local) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	clear(l.kek)
	l.keys = nil
	l.signers = nil
	return nil
}
