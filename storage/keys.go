package storage

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/argon2"
)

const (
	// KeyFileName is the key file of a store with a random key.
	KeyFileName = "store.key"
	// KDFFileName holds the Argon2id salt and parameters of a passphrase store.
	KDFFileName = "store.kdf"

	keyLen = 32
	// maxKDFFileLen bounds what Open reads of store.kdf.
	maxKDFFileLen = 4096
)

// kdfParams are the Argon2id parameters and salt of a passphrase store, as
// kept in store.kdf (JSON).
type kdfParams struct {
	Version   int    `json:"version"`
	KDF       string `json:"kdf"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Salt      []byte `json:"salt"` // base64 in JSON
}

// defaultKDFParams are RFC 9106's second recommended Argon2id option (for
// memory-constrained environments): t=3, m=64 MiB, p=4.
var defaultKDFParams = kdfParams{
	Version:   1,
	KDF:       "argon2id",
	Time:      3,
	MemoryKiB: 64 << 10,
	Threads:   4,
}

func (p kdfParams) validate() error {
	switch {
	case p.Version != 1:
		return fmt.Errorf("unsupported kdf file version %d", p.Version)
	case p.KDF != "argon2id":
		return fmt.Errorf("unsupported kdf %q", p.KDF)
	case p.Time < 1 || p.Time > 64:
		return fmt.Errorf("argon2id time %d out of range 1..64", p.Time)
	case p.Threads < 1 || p.Threads > 64:
		return fmt.Errorf("argon2id threads %d out of range 1..64", p.Threads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > 4<<20:
		return fmt.Errorf("argon2id memory %d KiB out of range", p.MemoryKiB)
	}
	return nil
}

// decodeKDFParams parses and validates store.kdf.
func decodeKDFParams(b []byte) (kdfParams, error) {
	if len(b) > maxKDFFileLen {
		return kdfParams{}, errors.New("kdf file too large")
	}
	var p kdfParams
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return kdfParams{}, fmt.Errorf("kdf file: %w", err)
	}
	if err := p.validate(); err != nil {
		return kdfParams{}, err
	}
	if len(p.Salt) < 16 || len(p.Salt) > 64 {
		return kdfParams{}, fmt.Errorf("kdf salt of %d bytes, want 16..64", len(p.Salt))
	}
	return p, nil
}

func (p kdfParams) derive(passphrase []byte) []byte {
	return argon2.IDKey(passphrase, p.Salt, p.Time, p.MemoryKiB, p.Threads, keyLen)
}

// keySource is what a store's directory says about its key.
type keySource struct {
	keyFile []byte     // contents of store.key, if present
	kdf     *kdfParams // contents of store.kdf, if present
}

func readKeySource(dir string) (keySource, error) {
	var ks keySource
	kb, err := readSmallFile(filepath.Join(dir, KeyFileName), keyLen+1)
	switch {
	case err == nil:
		if len(kb) != keyLen {
			return ks, fmt.Errorf("%s: %d bytes, want %d: %w", KeyFileName, len(kb), keyLen, ErrWrongKey)
		}
		ks.keyFile = kb
	case !errors.Is(err, fs.ErrNotExist):
		return ks, err
	}
	pb, err := readSmallFile(filepath.Join(dir, KDFFileName), maxKDFFileLen+1)
	switch {
	case err == nil:
		p, err := decodeKDFParams(pb)
		if err != nil {
			return ks, fmt.Errorf("%s: %w", KDFFileName, err)
		}
		ks.kdf = &p
	case !errors.Is(err, fs.ErrNotExist):
		return ks, err
	}
	if ks.keyFile != nil && ks.kdf != nil {
		return ks, fmt.Errorf("both %s and %s present: remove the one that does not belong to this store", KeyFileName, KDFFileName)
	}
	return ks, nil
}

func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// resolveKey returns the store key for the directory's key source. With
// create, a missing key file or kdf file is created; otherwise a missing one
// is ErrWrongKey.
func resolveKey(dir string, ks keySource, cfg *config, create bool) ([]byte, error) {
	if cfg.passphrase != nil {
		if ks.keyFile != nil {
			return nil, fmt.Errorf("store has a key file, open it without a passphrase: %w", ErrWrongKey)
		}
		p := ks.kdf
		if p == nil {
			if !create {
				return nil, fmt.Errorf("%s missing: %w", KDFFileName, ErrWrongKey)
			}
			np := cfg.kdf
			np.Salt = make([]byte, 16)
			rand.Read(np.Salt)
			b, err := json.Marshal(np)
			if err != nil {
				return nil, err
			}
			if err := writeFileAtomic(dir, KDFFileName, b); err != nil {
				return nil, err
			}
			p = &np
		}
		return p.derive(cfg.passphrase), nil
	}
	if ks.kdf != nil {
		return nil, fmt.Errorf("store is protected by a passphrase, open it with WithPassphrase: %w", ErrWrongKey)
	}
	if ks.keyFile != nil {
		return ks.keyFile, nil
	}
	if !create {
		return nil, fmt.Errorf("%s missing: %w", KeyFileName, ErrWrongKey)
	}
	k := make([]byte, keyLen)
	rand.Read(k)
	if err := writeFileAtomic(dir, KeyFileName, k); err != nil {
		return nil, err
	}
	return k, nil
}

// writeFileAtomic writes name in dir with mode 0600 through a synced
// temporary file and a rename, then syncs dir.
func writeFileAtomic(dir, name string, b []byte) error {
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(b)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpName, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable. It is best effort: some platforms
// cannot sync a directory.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	_ = d.Sync()
	return d.Close()
}
