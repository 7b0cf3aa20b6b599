package sdk

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Identity is what a device needs to sign uploads: its registry id, the version of its
// current key, and that key. The private key is a secret: keep it in a file only the device
// process can read (SaveIdentity writes it with mode 0600) or in a secure element.
type Identity struct {
	DeviceID   string
	KeyVersion uint64
	PrivateKey ed25519.PrivateKey
}

type identityFile struct {
	DeviceID   string `json:"device_id"`
	KeyVersion uint64 `json:"key_version"`
	Seed       []byte `json:"ed25519_seed"`
}

// Validate checks that the identity can sign uploads.
func (id Identity) Validate() error {
	if id.DeviceID == "" {
		return errors.New("identity: no device id")
	}
	if id.KeyVersion == 0 {
		return errors.New("identity: key version 0")
	}
	if len(id.PrivateKey) != ed25519.PrivateKeySize {
		return errors.New("identity: not an Ed25519 private key")
	}
	return nil
}

// SaveIdentity writes id to path atomically, readable by the owner only.
func SaveIdentity(path string, id Identity) error {
	if err := id.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(identityFile{DeviceID: id.DeviceID, KeyVersion: id.KeyVersion, Seed: id.PrivateKey.Seed()})
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return writeFileAtomic(path, b, 0o600)
}

// LoadIdentity reads an identity written by SaveIdentity.
func LoadIdentity(path string) (Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("load identity: %w", err)
	}
	var f identityFile
	if err := json.Unmarshal(b, &f); err != nil {
		return Identity{}, fmt.Errorf("load identity %s: %w", path, err)
	}
	if len(f.Seed) != ed25519.SeedSize {
		return Identity{}, fmt.Errorf("load identity %s: bad key seed", path)
	}
	id := Identity{DeviceID: f.DeviceID, KeyVersion: f.KeyVersion, PrivateKey: ed25519.NewKeyFromSeed(f.Seed)}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("load identity %s: %w", path, err)
	}
	return id, nil
}

// writeFileAtomic writes b to path through a temporary file in the same directory, synced
// and renamed over path, then syncs the directory: after it returns the file is either the
// old one or the new one, whatever crash follows.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
