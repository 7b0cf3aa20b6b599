package keys_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// Reproduce the figures of docs/benchmarks.md (## Keys):
//
//	tools/vault/build.sh && go test ./keys -run '^$' -bench . -benchtime 2s

type benchBackend struct {
	name string
	open func(b *testing.B) keys.Backend
}

func benchBackends(b *testing.B) []benchBackend {
	var vs *keystest.VaultServer
	return []benchBackend{
		{"local", func(b *testing.B) keys.Backend {
			l, err := keys.NewLocal(keys.LocalConfig{Dir: b.TempDir(), Passphrase: []byte("benchmark passphrase"), ScryptN: 1 << 10})
			if err != nil {
				b.Fatal(err)
			}
			return l
		}},
		{"vault", func(b *testing.B) keys.Backend {
			if vs == nil {
				vs = keystest.StartVault(b)
			}
			return newVault(b, vs, randomPrefix(b))
		}},
	}
}

func benchRing(b *testing.B, be keys.Backend, cfg keys.Config) *keys.Ring {
	b.Helper()
	cfg.Backend = be
	r, err := keys.NewRing(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.EnsureKeys(context.Background()); err != nil {
		b.Fatal(err)
	}
	return r
}

// Signatures per second: one Sign per call, and SignBatch of 64 (one Vault request).
//
// Verifies: REQ-KEY-001
func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	for _, bb := range benchBackends(b) {
		be := bb.open(b)
		r := benchRing(b, be, keys.Config{})
		msg := bytes.Repeat([]byte("c"), 128) // a checkpoint-sized note body
		for _, p := range []keys.Purpose{keys.AuditCheckpoint, keys.ReleaseSigning} {
			s, err := r.Signer(ctx, p)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%s/%s/single", bb.name, p.Algorithm()), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := s.Sign(ctx, msg); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
			})
			b.Run(fmt.Sprintf("%s/%s/parallel", bb.name, p.Algorithm()), func(b *testing.B) {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := s.Sign(ctx, msg); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
			})
			batch := make([][]byte, 64)
			for i := range batch {
				batch[i] = msg
			}
			b.Run(fmt.Sprintf("%s/%s/batch64", bb.name, p.Algorithm()), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := s.SignBatch(ctx, batch); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "sigs/s")
			})
		}
		be.Close()
	}
}

// Envelope encryption throughput of 1 KiB values, with the data-key cache (default bounds)
// and without it (a new data key per value; every decryption unwraps).
//
// Verifies: REQ-KEY-003
func BenchmarkEnvelope(b *testing.B) {
	ctx := context.Background()
	pt := bytes.Repeat([]byte("p"), 1024)
	aad := []byte("patient/0/notes")
	for _, bb := range benchBackends(b) {
		be := bb.open(b)
		for _, mode := range []struct {
			name string
			cfg  keys.Config
		}{{"cached", keys.Config{}}, {"uncached", keys.Config{DataKeyMaxUses: 1, UnwrapCacheSize: -1}}} {
			r := benchRing(b, be, mode.cfg)
			env, err := r.Envelope(keys.PHIEncryption)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%s/encrypt/%s", bb.name, mode.name), func(b *testing.B) {
				b.SetBytes(int64(len(pt)))
				for i := 0; i < b.N; i++ {
					if _, err := env.Encrypt(ctx, pt, aad); err != nil {
						b.Fatal(err)
					}
				}
			})
			cts := make([][]byte, 256)
			for i := range cts {
				if cts[i], err = env.Encrypt(ctx, pt, aad); err != nil {
					b.Fatal(err)
				}
			}
			b.Run(fmt.Sprintf("%s/decrypt/%s", bb.name, mode.name), func(b *testing.B) {
				b.SetBytes(int64(len(pt)))
				for i := 0; i < b.N; i++ {
					if _, err := env.Decrypt(ctx, cts[i%len(cts)], aad); err != nil {
						b.Fatal(err)
					}
				}
			})
			if mode.name == "uncached" {
				// 64 values under 64 distinct data keys: one batched unwrap request.
				items := make([]keys.Sealed, 64)
				for i := range items {
					items[i] = keys.Sealed{Ciphertext: cts[i], AAD: aad}
				}
				b.Run(fmt.Sprintf("%s/decrypt/uncached-batch64", bb.name), func(b *testing.B) {
					b.SetBytes(int64(len(pt) * len(items)))
					for i := 0; i < b.N; i++ {
						if _, err := env.DecryptBatch(ctx, items); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
		be.Close()
	}
}

// A PHI write as the clinical core does it for a new patient: seal the identifier and the
// name, and compute the identifier's blind index; with and without the data-key cache.
//
// Verifies: REQ-KEY-006
func BenchmarkPHIWrite(b *testing.B) {
	ctx := context.Background()
	for _, bb := range benchBackends(b) {
		be := bb.open(b)
		for _, mode := range []struct {
			name string
			cfg  keys.Config
		}{{"cached", keys.Config{}}, {"uncached", keys.Config{DataKeyMaxUses: 1, UnwrapCacheSize: -1}}} {
			phi := benchRing(b, be, mode.cfg).PHI()
			b.Run(fmt.Sprintf("%s/%s", bb.name, mode.name), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					id := []byte(fmt.Sprintf("MRN-%08d", i))
					aad := []byte(fmt.Sprintf("patient/%d/phi", i))
					if _, err := phi.Seal(ctx, id, aad); err != nil {
						b.Fatal(err)
					}
					if _, err := phi.Seal(ctx, []byte("Ada Lovelace"), aad); err != nil {
						b.Fatal(err)
					}
					if _, err := phi.BlindIndex(ctx, id); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "patients/s")
			})
		}
		be.Close()
	}
}
