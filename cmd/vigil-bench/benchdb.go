package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/google/uuid"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/internal/pgxuuid"
	"github.com/vigilhealth/vigil/internal/schema"
)

// The throwaway databases of the benchmarks, one place for every subcommand.

// benchDatabase creates a database vigil_bench_<random> on the PostgreSQL server of admin and
// migrates it. It returns its URL and drop, which drops it (unless keep).
func benchDatabase(ctx context.Context, admin string, keep bool) (dbURL string, drop func(), err error) {
	if admin == "" {
		return "", nil, errors.New("VIGIL_DATABASE_URL is not set")
	}
	u, err := url.Parse(admin)
	if err != nil {
		return "", nil, fmt.Errorf("VIGIL_DATABASE_URL: %w", err)
	}
	dbName := "vigil_bench_" + hex.EncodeToString(uuid.New().NodeID())
	if err := adminSQL(ctx, admin, "CREATE DATABASE "+dbName); err != nil {
		return "", nil, fmt.Errorf("create benchmark database: %w", err)
	}
	drop = func() {
		if keep {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := adminSQL(cctx, admin, "DROP DATABASE IF EXISTS "+dbName+" WITH (FORCE)"); err != nil {
			slog.Error("drop benchmark database", slog.String("error", err.Error()))
		}
	}
	u.Path = "/" + dbName
	pool, err := benchPoolAt(ctx, u.String(), 2)
	if err != nil {
		drop()
		return "", nil, err
	}
	pool.Close()
	return u.String(), drop, nil
}

// benchPool creates a throwaway database (benchDatabase) on the server of VIGIL_DATABASE_URL
// and opens a pool of poolSize connections on it. drop closes the pool and drops the database
// (unless keep).
func benchPool(ctx context.Context, poolSize int, keep bool) (_ *pgxpool.Pool, drop func(), err error) {
	admin, err := adminURL()
	if err != nil {
		return nil, nil, err
	}
	dbURL, dropDB, err := benchDatabase(ctx, admin, keep)
	if err != nil {
		return nil, nil, err
	}
	pool, err := benchPoolAt(ctx, dbURL, poolSize)
	if err != nil {
		dropDB()
		return nil, nil, err
	}
	return pool, func() { pool.Close(); dropDB() }, nil
}

// benchPoolAt opens a pool of poolSize connections on dbURL and migrates the database (a
// no-op once it is).
func benchPoolAt(ctx context.Context, dbURL string, poolSize int) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = int32(poolSize)
	pcfg.AfterConnect = pgxuuid.AfterConnect
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, err
	}
	if _, err := schema.Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}
