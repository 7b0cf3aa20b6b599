package core

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilhealth/vigil/audit"
)

// Data classes, each a partitioned table with its own retention.
const (
	ClassObservations = "observations" // core_observations, by effective time
	ClassUploads      = "uploads"      // core_uploads, by receive time
)

var classTables = map[string]string{
	ClassObservations: "core_observations",
	ClassUploads:      "core_uploads",
}

type partitionCache struct {
	mu    sync.Mutex
	known map[string]bool // partition names known to exist
}

func day(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func partitionName(table string, d time.Time) string {
	return table + "_p" + d.Format("20060102")
}

// ensurePartitions makes sure the daily partitions of table for every day in days exist.
func (s *Service) ensurePartitions(ctx context.Context, table string, days []time.Time) error {
	var missing []time.Time
	s.parts.mu.Lock()
	for _, d := range days {
		if !s.parts.known[partitionName(table, d)] {
			missing = append(missing, d)
		}
	}
	s.parts.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	for _, d := range missing {
		if err := s.createPartition(ctx, table, d); err != nil {
			return err
		}
		s.parts.mu.Lock()
		s.parts.known[partitionName(table, d)] = true
		s.parts.mu.Unlock()
	}
	return nil
}

// createPartition creates one daily partition if it does not exist; concurrent creators
// (goroutines or processes) are serialized by an advisory lock.
func (s *Service) createPartition(ctx context.Context, table string, d time.Time) error {
	name := partitionName(table, d)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "core.partition."+table); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		_, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')",
			pgx.Identifier{name}.Sanitize(), pgx.Identifier{table}.Sanitize(),
			d.Format(time.RFC3339), d.AddDate(0, 0, 1).Format(time.RFC3339)))
		return err
	})
	if err != nil {
		return fmt.Errorf("create partition %s: %w", name, err)
	}
	return nil
}

// MaintainPartitions creates the daily partitions of every data class from today through
// Config.PartitionsAhead days ahead (UTC), so ingest never waits for DDL on the hot path.
func (s *Service) MaintainPartitions(ctx context.Context) error {
	today := day(s.cfg.Now())
	days := make([]time.Time, 0, s.cfg.PartitionsAhead+1)
	for i := 0; i <= s.cfg.PartitionsAhead; i++ {
		days = append(days, today.AddDate(0, 0, i))
	}
	for _, table := range []string{"core_observations", "core_uploads"} {
		if err := s.ensurePartitions(ctx, table, days); err != nil {
			return err
		}
	}
	return nil
}

// Partition is one daily partition of a data class.
type Partition struct {
	Class string    `json:"class"`
	Name  string    `json:"name"`
	From  time.Time `json:"from"` // inclusive
	To    time.Time `json:"to"`   // exclusive
}

// Partitions lists the partitions of every data class, oldest first.
func (s *Service) Partitions(ctx context.Context) ([]Partition, error) {
	var out []Partition
	for _, class := range []string{ClassObservations, ClassUploads} {
		table := classTables[class]
		rows, err := s.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i
			JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
			WHERE p.relname = $1`, table)
		if err != nil {
			return nil, fmt.Errorf("list partitions of %s: %w", table, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("list partitions of %s: %w", table, err)
		}
		for _, n := range names {
			d, err := time.Parse("20060102", strings.TrimPrefix(n, table+"_p"))
			if err != nil {
				continue // not one of ours; never dropped
			}
			out = append(out, Partition{Class: class, Name: n, From: d, To: d.AddDate(0, 0, 1)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].From.Equal(out[j].From) {
			return out[i].From.Before(out[j].From)
		}
		return out[i].Class < out[j].Class
	})
	return out, nil
}

// EnforceRetention drops every partition whose whole range is older than its class's
// retention (its end ≤ now − retention), each drop audited as "retention.partition_dropped"
// in the same transaction as the DROP. It returns the partitions dropped; a partition whose
// table cannot be locked within 500 ms (busy ingest) is left for the next pass.
func (s *Service) EnforceRetention(ctx context.Context) ([]Partition, error) {
	now := s.cfg.Now()
	parts, err := s.Partitions(ctx)
	if err != nil {
		return nil, err
	}
	keep := map[string]time.Duration{ClassObservations: s.cfg.Retention.Observations, ClassUploads: s.cfg.Retention.Uploads}
	var dropped []Partition
	for _, p := range parts {
		cutoff := now.Add(-keep[p.Class])
		if p.To.After(cutoff) {
			continue
		}
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			// DROP locks the parent table: never queue behind (and so hold up) ingest for long;
			// a partition that cannot be locked now is dropped at the next pass.
			if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '500ms'"); err != nil {
				return err
			}
			var rows int64
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{p.Name}.Sanitize()).Scan(&rows); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "DROP TABLE "+pgx.Identifier{p.Name}.Sanitize()); err != nil {
				return err
			}
			_, err := s.cfg.Recorder.Record(ctx, tx, audit.Event{
				Time:    now,
				Actor:   audit.Actor{Kind: audit.ActorService, ID: "core.retention", AuthMethod: "internal"},
				Action:  "retention.partition_dropped",
				Object:  audit.Object{Type: "partition", ID: p.Name},
				Outcome: audit.OutcomeSuccess,
				Payload: map[string]any{"class": p.Class, "from": p.From, "to": p.To, "rows": rows,
					"retention_days": keep[p.Class].Hours() / 24, "cutoff": cutoff},
			})
			return err
		})
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "55P03") {
				continue // dropped meanwhile by another process, or busy: next pass
			}
			return dropped, fmt.Errorf("retention: drop %s: %w", p.Name, err)
		}
		s.parts.mu.Lock()
		delete(s.parts.known, p.Name)
		s.parts.mu.Unlock()
		dropped = append(dropped, p)
	}
	return dropped, nil
}
