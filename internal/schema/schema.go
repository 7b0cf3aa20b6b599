// Package schema owns Vigil's PostgreSQL schema: the migrations embedded in the binary, applying
// them, and checking that a database's schema is one the running binary can work with.
//
// Migration files live in migrations/ and are numbered by area so that areas never collide:
// 00001–00099 foundation, 00100–00199 audit (including Trillian's own tables), 00200–00299 keys,
// 00300–00399 clinical core, 00400–00499 devices, 00500–00599 server (portal, sessions),
// 00800–00899 operations.
//
// # Expand and contract (rolling upgrades)
//
// Each migration declares its phase in a comment line before "-- +goose Up":
//
//	-- vigil:phase expand
//	-- vigil:phase contract
//	-- vigil:phase contract compat=00811
//
// An expand migration only adds (a table, a nullable column, an index built concurrently…):
// the previous binary keeps working on the expanded schema, so it is applied while the old
// replicas still run (`vigil migrate --phase expand`), before any new binary starts. A contract
// migration removes or narrows what an older binary needs; it is applied once every replica
// runs the new binary (`vigil migrate --phase contract`), and from then on the database refuses
// every binary whose latest migration is below its compat version (by default the contract
// migration's own version). A migration without a phase is breaking: every binary that does not
// know it is refused, and it is applied with every replica stopped (`vigil migrate`).
//
// `vigil migrate` records the phase of each migration it applies in vigil_schema_phases, so
// that an older binary, which does not have the newer migration files, can still tell whether
// it may run. A binary runs (Status.Check) when every expand and breaking migration it embeds
// is applied (its own contract migrations may still be pending) and every applied migration it
// does not know is an expand migration, or a contract migration whose compat it meets.
package schema

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrSchemaAhead means the database was migrated by a newer Vigil in a way this binary cannot
// work with (a contract or breaking migration it does not know): running would risk writing
// data the newer schema does not expect. Upgrade the binary.
var ErrSchemaAhead = errors.New("database schema is newer than this binary")

// ErrSchemaBehind means expand (or breaking) migrations embedded in this binary have not been
// applied yet. Run `vigil migrate`.
var ErrSchemaBehind = errors.New("database schema is older than this binary")

// ErrPhaseOrder means the requested phase cannot be applied now: a breaking migration is
// pending (it needs every replica stopped), or contract was asked while expand migrations are
// still pending.
var ErrPhaseOrder = errors.New("migration phase cannot be applied now")

// Phase is a migration's phase (see the package documentation).
type Phase string

// The phases. PhaseAll, the empty phase, selects every pending migration in Set.Apply.
const (
	PhaseAll      Phase = ""
	PhaseExpand   Phase = "expand"
	PhaseContract Phase = "contract"
	PhaseBreaking Phase = "breaking"
)

// ParsePhase reads a --phase value: expand, contract, or all / "" (every pending migration).
func ParsePhase(v string) (Phase, error) {
	switch v {
	case "", "all":
		return PhaseAll, nil
	case string(PhaseExpand), string(PhaseContract):
		return Phase(v), nil
	}
	return "", fmt.Errorf("phase %q: want expand, contract or all", v)
}

// Migration is one migration and its declared phase.
type Migration struct {
	Version int64
	Name    string // the file name without its extension, e.g. 00810_schema_phases
	Phase   Phase
	// Compat is, for a contract migration, the lowest latest-migration version of a binary
	// that may run once it is applied; for a breaking one, its own version; 0 for expand.
	Compat int64
}

func (m Migration) String() string {
	switch m.Phase {
	case PhaseContract:
		return fmt.Sprintf("%05d (contract, binaries from %05d)", m.Version, m.Compat)
	case PhaseBreaking:
		return fmt.Sprintf("%05d (breaking)", m.Version)
	}
	return fmt.Sprintf("%05d (%s)", m.Version, m.Phase)
}

// refuses reports whether this applied migration keeps a binary whose latest migration is
// latest, and which does not embed it, from running.
func (m Migration) refuses(latest int64) bool {
	switch m.Phase {
	case PhaseExpand:
		return false
	case PhaseContract:
		return m.Compat > latest
	}
	return true
}

// Set is a set of migrations: the binary's own (Embedded), or, in tests, another version's.
type Set struct {
	fsys fs.FS
	migs []Migration // by version
	byV  map[int64]Migration
}

var embedded = sync.OnceValues(func() (*Set, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return NewSet(sub)
})

// Embedded is the set of migrations embedded in this binary. It panics if a migration's phase
// declaration is malformed (TestEmbeddedPhases keeps that from shipping).
func Embedded() *Set {
	s, err := embedded()
	if err != nil {
		panic(fmt.Sprintf("schema: embedded migrations: %v", err))
	}
	return s
}

// NewSet reads the *.sql migrations at the top of fsys and their phase declarations.
func NewSet(fsys fs.FS) (*Set, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	s := &Set{fsys: fsys, byV: map[int64]Migration{}}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		m, err := parseMigration(e.Name(), b)
		if err != nil {
			return nil, err
		}
		if _, dup := s.byV[m.Version]; dup {
			return nil, fmt.Errorf("migration %s: version %d used twice", e.Name(), m.Version)
		}
		s.byV[m.Version] = m
		s.migs = append(s.migs, m)
	}
	sort.Slice(s.migs, func(i, j int) bool { return s.migs[i].Version < s.migs[j].Version })
	return s, nil
}

// Plus is s with the migrations of extra added (tests: the next version's schema).
func (s *Set) Plus(extra fs.FS) (*Set, error) {
	m := fstest.MapFS{}
	for _, src := range []fs.FS{s.fsys, extra} {
		entries, err := fs.ReadDir(src, ".")
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			b, err := fs.ReadFile(src, e.Name())
			if err != nil {
				return nil, err
			}
			m[e.Name()] = &fstest.MapFile{Data: b, Mode: 0o444}
		}
	}
	return NewSet(m)
}

// Migrations lists the set's migrations by version.
func (s *Set) Migrations() []Migration { return append([]Migration(nil), s.migs...) }

// Latest is the highest version in the set.
func (s *Set) Latest() int64 {
	if len(s.migs) == 0 {
		return 0
	}
	return s.migs[len(s.migs)-1].Version
}

const phasePrefix = "-- vigil:phase"

// parseMigration reads a migration's version from its name and its phase from the comment
// lines before "-- +goose Up".
func parseMigration(name string, body []byte) (Migration, error) {
	m := Migration{Name: strings.TrimSuffix(name, path.Ext(name)), Phase: PhaseBreaking}
	num, _, ok := strings.Cut(name, "_")
	v, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil || v <= 0 {
		return m, fmt.Errorf("migration %s: the name does not start with a version", name)
	}
	m.Version, m.Compat = v, v
	declared := false
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "-- +goose Up") {
			break
		}
		rest, found := strings.CutPrefix(line, phasePrefix)
		if !found {
			continue
		}
		if declared {
			return m, fmt.Errorf("migration %s: phase declared twice", name)
		}
		declared = true
		f := strings.Fields(rest)
		if len(f) == 0 || len(f) > 2 {
			return m, fmt.Errorf("migration %s: %q: want %s expand|contract|breaking [compat=VERSION]", name, line, phasePrefix)
		}
		switch Phase(f[0]) {
		case PhaseExpand:
			m.Phase, m.Compat = PhaseExpand, 0
		case PhaseContract, PhaseBreaking:
			m.Phase = Phase(f[0])
		default:
			return m, fmt.Errorf("migration %s: unknown phase %q (want expand, contract or breaking)", name, f[0])
		}
		if len(f) == 2 {
			c, ok := strings.CutPrefix(f[1], "compat=")
			cv, err := strconv.ParseInt(c, 10, 64)
			if m.Phase != PhaseContract || !ok || err != nil || cv <= 0 || cv > v {
				return m, fmt.Errorf("migration %s: %q: compat=VERSION is for contract migrations, a version at most the migration's own", name, f[1])
			}
			m.Compat = cv
		}
	}
	return m, sc.Err()
}

// Status describes a database's schema relative to a set of migrations (the binary's).
type Status struct {
	Current int64 // highest applied migration version (0 when none)
	Latest  int64 // highest migration version of the binary
	Pending int   // the binary's migrations not yet applied, of every phase
	// PendingExpand, PendingContract and PendingBreaking are the pending migrations by phase.
	PendingExpand, PendingContract, PendingBreaking []Migration
	// Unknown are the applied migrations the binary does not have (applied by a newer one),
	// with their phase as recorded by `vigil migrate` (breaking when not recorded).
	Unknown []Migration
	// Refusing are the Unknown migrations that keep this binary from running.
	Refusing []Migration
}

// Check returns nil when the binary may run on this schema: every expand and breaking
// migration it has is applied, and no applied migration it does not know refuses it (see the
// package documentation). Otherwise ErrSchemaAhead or ErrSchemaBehind, wrapped with the why.
func (s Status) Check() error {
	if len(s.Refusing) > 0 {
		return fmt.Errorf("%w: the database has migration(s) %s applied by a newer Vigil, and this binary knows migrations up to %05d only; upgrade this binary (the compatibility window of the schema starts at %05d)",
			ErrSchemaAhead, list(s.Refusing), s.Latest, s.MinBinary())
	}
	if n := len(s.PendingExpand) + len(s.PendingBreaking); n > 0 {
		return fmt.Errorf("%w: %d migration(s) pending that this binary needs: %s (database at %d, binary at %d)",
			ErrSchemaBehind, n, list(append(append([]Migration(nil), s.PendingBreaking...), s.PendingExpand...)), s.Current, s.Latest)
	}
	return nil
}

// MinBinary is the lowest latest-migration version a binary must have to run on this schema
// as far as the migrations unknown to this binary tell (0 when they impose nothing).
func (s Status) MinBinary() int64 {
	var min int64
	for _, m := range s.Unknown {
		if m.Phase != PhaseExpand && m.Compat > min {
			min = m.Compat
		}
	}
	return min
}

// Exact reports whether the database has exactly the binary's migrations, all applied.
func (s Status) Exact() bool { return s.Pending == 0 && len(s.Unknown) == 0 }

// Summary is a one-line account of the state, for `vigil migrate --status` and readiness.
func (s Status) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "database at %d, binary at %d, %d pending", s.Current, s.Latest, s.Pending)
	if len(s.PendingExpand) > 0 {
		fmt.Fprintf(&b, "; expand pending: %s", list(s.PendingExpand))
	}
	if len(s.PendingContract) > 0 {
		fmt.Fprintf(&b, "; contract pending (apply once every replica runs this binary): %s", list(s.PendingContract))
	}
	if len(s.PendingBreaking) > 0 {
		fmt.Fprintf(&b, "; breaking pending (stop every replica first): %s", list(s.PendingBreaking))
	}
	if len(s.Unknown) > 0 {
		fmt.Fprintf(&b, "; applied by a newer binary: %s", list(s.Unknown))
	}
	return b.String()
}

func list(ms []Migration) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.String()
	}
	return strings.Join(parts, ", ")
}

func (s *Set) provider(pool *pgxpool.Pool) (*goose.Provider, *sql.DB, error) {
	db := stdlib.OpenDBFromPool(pool)
	p, err := goose.NewProvider(goose.DialectPostgres, db, s.fsys, goose.WithAllowOutofOrder(true))
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("load migrations: %w", err)
	}
	return p, db, nil
}

// Migrate applies every pending embedded migration, each in its own transaction, and returns
// the versions applied. It refuses (ErrSchemaAhead) to touch a database this binary may not
// run on. Concurrent callers are serialized by a PostgreSQL advisory lock.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]int64, error) {
	applied, err := Embedded().Apply(ctx, pool, PhaseAll)
	out := make([]int64, len(applied))
	for i, m := range applied {
		out[i] = m.Version
	}
	return out, err
}

// Inspect reads the database's migration state relative to the embedded migrations without
// changing anything.
func Inspect(ctx context.Context, pool *pgxpool.Pool) (Status, error) {
	return Embedded().Inspect(ctx, pool)
}

const lockKey = 0x76696769 // "vigi"

// Apply applies the set's pending migrations of phase (PhaseAll: every pending one, in version
// order), each in its own transaction, records each one's phase, and returns those applied.
// PhaseExpand refuses (ErrPhaseOrder) while a breaking migration is pending; PhaseContract
// refuses while any expand or breaking migration is pending. A database this set may not run
// on is refused (ErrSchemaAhead) and left untouched, and so is a contract migration while a
// live replica (vigil_replicas) runs a binary it would refuse (ErrPhaseOrder). Concurrent
// callers are serialized by a PostgreSQL advisory lock.
func (s *Set) Apply(ctx context.Context, pool *pgxpool.Pool, phase Phase) ([]Migration, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: acquire connection: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return nil, fmt.Errorf("migrate: take advisory lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey) }()

	st, err := s.Inspect(ctx, pool)
	if err != nil {
		return nil, err
	}
	if len(st.Refusing) > 0 {
		return nil, st.Check()
	}
	var todo []Migration
	switch phase {
	case PhaseAll:
		todo = s.pending(st)
	case PhaseExpand:
		if len(st.PendingBreaking) > 0 {
			return nil, fmt.Errorf("%w: breaking migration(s) pending: %s; they declare no expand/contract phase, so stop every replica and run `vigil migrate` without --phase",
				ErrPhaseOrder, list(st.PendingBreaking))
		}
		todo = st.PendingExpand
	case PhaseContract:
		if n := len(st.PendingExpand) + len(st.PendingBreaking); n > 0 {
			return nil, fmt.Errorf("%w: %d expand or breaking migration(s) still pending; apply the expand phase first (then upgrade every replica)", ErrPhaseOrder, n)
		}
		todo = st.PendingContract
	default:
		return nil, fmt.Errorf("migrate: unknown phase %q", phase)
	}
	if err := checkNoReplicaRefused(ctx, pool, todo); err != nil {
		return nil, err
	}
	p, db, err := s.provider(pool)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	var applied []Migration
	for _, m := range todo {
		if _, err := p.ApplyVersion(ctx, m.Version, true); err != nil {
			return applied, fmt.Errorf("migrate %s: %w", m.Name, err)
		}
		applied = append(applied, m)
		if err := s.recordPhases(ctx, pool); err != nil {
			return applied, err
		}
	}
	return applied, s.recordPhases(ctx, pool)
}

// pending is every pending migration of st, by version.
func (s *Set) pending(st Status) []Migration {
	all := append(append(append([]Migration(nil), st.PendingExpand...), st.PendingContract...), st.PendingBreaking...)
	sort.Slice(all, func(i, j int) bool { return all[i].Version < all[j].Version })
	return all
}

// recordPhases writes the phase of every applied migration of the set not yet recorded, once
// vigil_schema_phases exists (a crash between a migration and its record is mended by the
// next run; until then the unrecorded migration counts as breaking, which only refuses more).
func (s *Set) recordPhases(ctx context.Context, pool *pgxpool.Pool) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('vigil_schema_phases') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return err
	}
	var vs, compats []int64
	var phases, names []string
	for _, m := range s.migs {
		vs, phases, compats, names = append(vs, m.Version), append(phases, string(m.Phase)), append(compats, m.Compat), append(names, m.Name)
	}
	_, err := pool.Exec(ctx, `
		INSERT INTO vigil_schema_phases (version, phase, compat, name)
		SELECT m.version, m.phase, m.compat, m.name
		FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS m(version, phase, compat, name)
		WHERE EXISTS (SELECT 1 FROM goose_db_version g WHERE g.version_id = m.version AND g.is_applied)
		ON CONFLICT (version) DO UPDATE SET phase = excluded.phase, compat = excluded.compat, name = excluded.name`,
		vs, phases, compats, names)
	if err != nil {
		return fmt.Errorf("migrate: record phases: %w", err)
	}
	return nil
}

// Inspect reads the database's migration state relative to the set without changing anything.
func (s *Set) Inspect(ctx context.Context, pool *pgxpool.Pool) (Status, error) {
	st := Status{Latest: s.Latest()}
	var exists, phases bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('goose_db_version') IS NOT NULL, to_regclass('vigil_schema_phases') IS NOT NULL").Scan(&exists, &phases); err != nil {
		return Status{}, fmt.Errorf("inspect schema: %w", err)
	}
	applied := map[int64]Migration{}
	if exists {
		q := `SELECT DISTINCT g.version_id, coalesce(p.phase, 'breaking'), coalesce(p.compat, g.version_id), coalesce(p.name, '')
			FROM goose_db_version g LEFT JOIN vigil_schema_phases p ON p.version = g.version_id
			WHERE g.is_applied AND g.version_id > 0`
		if !phases {
			q = `SELECT DISTINCT version_id, 'breaking', version_id, '' FROM goose_db_version WHERE is_applied AND version_id > 0`
		}
		rows, err := pool.Query(ctx, q)
		if err != nil {
			return Status{}, fmt.Errorf("inspect schema: %w", err)
		}
		for rows.Next() {
			var m Migration
			var phase string
			if err := rows.Scan(&m.Version, &phase, &m.Compat, &m.Name); err != nil {
				rows.Close()
				return Status{}, fmt.Errorf("inspect schema: %w", err)
			}
			m.Phase = Phase(phase)
			applied[m.Version] = m
			st.Current = max(st.Current, m.Version)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return Status{}, fmt.Errorf("inspect schema: %w", err)
		}
	}
	for _, m := range s.migs {
		if _, ok := applied[m.Version]; ok {
			continue
		}
		st.Pending++
		switch m.Phase {
		case PhaseExpand:
			st.PendingExpand = append(st.PendingExpand, m)
		case PhaseContract:
			st.PendingContract = append(st.PendingContract, m)
		default:
			st.PendingBreaking = append(st.PendingBreaking, m)
		}
	}
	for v, m := range applied {
		if _, ok := s.byV[v]; ok {
			continue
		}
		st.Unknown = append(st.Unknown, m)
		if m.refuses(st.Latest) {
			st.Refusing = append(st.Refusing, m)
		}
	}
	byVersion := func(ms []Migration) {
		sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	}
	byVersion(st.Unknown)
	byVersion(st.Refusing)
	return st, nil
}

// Fingerprint is a short hash of every embedded migration's name and content. Tests use it to
// name template databases, so a changed migration never reuses a stale template.
func Fingerprint() string {
	h := sha256.New()
	entries, _ := fs.ReadDir(migrations, "migrations")
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		b, _ := migrations.ReadFile("migrations/" + n)
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// LatestVersion is the highest migration version embedded in this binary.
func LatestVersion() int64 {
	entries, _ := fs.ReadDir(migrations, "migrations")
	var latest int64
	for _, e := range entries {
		var v int64
		if _, err := fmt.Sscanf(e.Name(), "%d_", &v); err == nil && v > latest {
			latest = v
		}
	}
	return latest
}
