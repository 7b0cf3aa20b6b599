package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrClosed is returned by RecordNow after the service was closed.
var ErrClosed = errors.New("audit service closed")

// committer group-commits events that have no transaction of their own (the server's
// request audit): concurrent calls are written together with one COPY in one transaction,
// and each call returns only once its event is committed.
type committer struct {
	pool *pgxpool.Pool
	reqs chan commitReq
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.RWMutex // held shared while queueing, exclusively to close
	closed bool
}

type commitReq struct {
	ev    Event
	reply chan commitRes
}

type commitRes struct {
	id  uuid.UUID
	err error
}

const maxGroupCommit = 1000

// commitTimeout bounds one group commit, so a hung database cannot hang Close.
const commitTimeout = 10 * time.Second

func newCommitter(pool *pgxpool.Pool) *committer {
	c := &committer{pool: pool, reqs: make(chan commitReq, maxGroupCommit), stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c
}

func (c *committer) loop() {
	defer close(c.done)
	for {
		var group []commitReq
		select {
		case <-c.stop:
			return
		case r := <-c.reqs:
			group = append(group, r)
		}
	drain:
		for len(group) < maxGroupCommit {
			select {
			case r := <-c.reqs:
				group = append(group, r)
			default:
				break drain
			}
		}
		c.commit(group)
	}
}

func (c *committer) commit(group []commitReq) {
	evs := make([]Event, len(group))
	for i, r := range group {
		evs[i] = r.ev
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	var ids []uuid.UUID
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		var err error
		ids, err = RecordMany(ctx, tx, evs)
		return err
	})
	if err != nil && len(group) > 1 {
		// One invalid event must not sink the others: commit them one by one.
		for _, r := range group {
			c.commit([]commitReq{r})
		}
		return
	}
	for i, r := range group {
		if err != nil {
			r.reply <- commitRes{err: err}
		} else {
			r.reply <- commitRes{id: ids[i]}
		}
	}
}

// record queues ev and waits until it is committed.
func (c *committer) record(ctx context.Context, ev Event) (uuid.UUID, error) {
	if err := ev.Validate(); err != nil {
		return uuid.Nil, fmt.Errorf("record audit event %s: %w", ev.Action, err)
	}
	r := commitReq{ev: ev, reply: make(chan commitRes, 1)}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return uuid.Nil, ErrClosed
	}
	select {
	case c.reqs <- r:
		c.mu.RUnlock()
	case <-ctx.Done():
		c.mu.RUnlock()
		return uuid.Nil, ctx.Err()
	}
	// Once queued, the event is committed (or fails) whatever ctx does: wait for the answer.
	res := <-r.reply
	return res.id, res.err
}

func (c *committer) close() {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.stop)
		<-c.done
		// Answer anything queued after the loop stopped.
		for {
			select {
			case r := <-c.reqs:
				c.commit([]commitReq{r})
			default:
				return
			}
		}
	})
}

// RecordNow records an event that has no transaction of its own (a request the server
// audits after the fact, a rejection) and returns once it is committed. Concurrent calls
// are group-committed in one transaction, so this is cheap under load. Domain code that
// changes state MUST use Record with its own transaction instead.
func (s *Service) RecordNow(ctx context.Context, ev Event) (uuid.UUID, error) {
	return s.commit.record(ctx, ev)
}
