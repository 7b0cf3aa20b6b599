package chain

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/trillian"
	"github.com/google/trillian/types"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// ErrLogUnavailable means the Trillian log could not be reached or answered with an error:
// retry later. Events wait in the outbox meanwhile; nothing is lost.
var ErrLogUnavailable = errors.New("audit log unavailable")

// Log is the audit chain's handle on its Trillian log tree, over Trillian's own gRPC API. The
// same code serves the embedded Trillian (embed.go) and an external one.
type Log struct {
	client trillian.TrillianLogClient
	treeID int64
}

// Root is a Trillian log root (unsigned: Vigil signs its own checkpoints).
type Root struct {
	Size uint64
	Hash leaf.Hash
}

// OpenLog returns the log of this installation on the Trillian server behind cc. On first
// start it creates and initializes the tree and stores its id in audit_log_state; later starts
// reuse it. Concurrent first starts are serialized by an advisory lock.
func OpenLog(ctx context.Context, pool *pgxpool.Pool, cc grpc.ClientConnInterface) (*Log, error) {
	l := &Log{client: trillian.NewTrillianLogClient(cc)}
	var treeID int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(7466100)"); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, "SELECT tree_id FROM audit_log_state").Scan(&treeID)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		admin := trillian.NewTrillianAdminClient(cc)
		tree, err := admin.CreateTree(ctx, &trillian.CreateTreeRequest{Tree: &trillian.Tree{
			TreeState:       trillian.TreeState_ACTIVE,
			TreeType:        trillian.TreeType_LOG,
			DisplayName:     "vigil-audit",
			Description:     "Vigil audit chain: one leaf per sealed batch of audit events",
			MaxRootDuration: durationpb.New(time.Hour),
		}})
		if err != nil {
			return fmt.Errorf("%w: create tree: %v", ErrLogUnavailable, err)
		}
		if _, err := l.client.InitLog(ctx, &trillian.InitLogRequest{LogId: tree.TreeId}); err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("%w: init log %d: %v", ErrLogUnavailable, tree.TreeId, err)
		}
		treeID = tree.TreeId
		_, err = tx.Exec(ctx, "INSERT INTO audit_log_state (tree_id) VALUES ($1)", treeID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	l.treeID = treeID
	return l, nil
}

// TreeID is the Trillian tree id of the log.
func (l *Log) TreeID() int64 { return l.treeID }

// Queue submits a batch leaf. Submitting the same batch again is harmless: Trillian keeps one
// leaf per identity hash (leaf.Batch.IdentityHash, from the batch id).
func (l *Log) Queue(ctx context.Context, b leaf.Batch) error {
	id := b.IdentityHash()
	_, err := l.client.QueueLeaf(ctx, &trillian.QueueLeafRequest{LogId: l.treeID, Leaf: &trillian.LogLeaf{
		LeafValue: b.Encode(), LeafIdentityHash: id[:],
	}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("%w: queue batch leaf: %v", ErrLogUnavailable, err)
	}
	return nil
}

// LatestRoot returns Trillian's latest log root.
func (l *Log) LatestRoot(ctx context.Context) (Root, error) {
	resp, err := l.client.GetLatestSignedLogRoot(ctx, &trillian.GetLatestSignedLogRootRequest{LogId: l.treeID})
	if err != nil {
		return Root{}, fmt.Errorf("%w: latest root: %v", ErrLogUnavailable, err)
	}
	return parseRoot(resp.GetSignedLogRoot())
}

func parseRoot(slr *trillian.SignedLogRoot) (Root, error) {
	var r types.LogRootV1
	if slr == nil {
		return Root{}, fmt.Errorf("%w: no log root", ErrLogUnavailable)
	}
	if err := r.UnmarshalBinary(slr.LogRoot); err != nil {
		return Root{}, fmt.Errorf("%w: parse log root: %v", ErrLogUnavailable, err)
	}
	var out Root
	out.Size = r.TreeSize
	if len(r.RootHash) != leaf.HashSize {
		return Root{}, fmt.Errorf("%w: root hash of %d bytes", ErrLogUnavailable, len(r.RootHash))
	}
	copy(out.Hash[:], r.RootHash)
	return out, nil
}

// Leaves returns the leaf values at [start, start+count) (fewer if the log is shorter).
func (l *Log) Leaves(ctx context.Context, start, count int64) ([][]byte, error) {
	var out [][]byte
	for count > 0 {
		resp, err := l.client.GetLeavesByRange(ctx, &trillian.GetLeavesByRangeRequest{LogId: l.treeID, StartIndex: start, Count: count})
		if err != nil {
			return nil, fmt.Errorf("%w: leaves [%d,+%d): %v", ErrLogUnavailable, start, count, err)
		}
		if len(resp.Leaves) == 0 {
			break
		}
		for _, lf := range resp.Leaves {
			out = append(out, lf.LeafValue)
		}
		start += int64(len(resp.Leaves))
		count -= int64(len(resp.Leaves))
	}
	return out, nil
}

// InclusionProof returns the inclusion proof of leaf index under the tree of size size.
func (l *Log) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	resp, err := l.client.GetInclusionProof(ctx, &trillian.GetInclusionProofRequest{LogId: l.treeID, LeafIndex: int64(index), TreeSize: int64(size)})
	if err != nil {
		return nil, fmt.Errorf("%w: inclusion proof of %d in %d: %v", ErrLogUnavailable, index, size, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("%w: no inclusion proof of %d in %d (tree not that large yet)", ErrLogUnavailable, index, size)
	}
	return resp.Proof.Hashes, nil
}

// ConsistencyProof returns the consistency proof between tree sizes from and to.
func (l *Log) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	if from == 0 || from == to {
		return nil, nil
	}
	resp, err := l.client.GetConsistencyProof(ctx, &trillian.GetConsistencyProofRequest{LogId: l.treeID, FirstTreeSize: int64(from), SecondTreeSize: int64(to)})
	if err != nil {
		return nil, fmt.Errorf("%w: consistency proof %d→%d: %v", ErrLogUnavailable, from, to, err)
	}
	if resp.Proof == nil {
		return nil, fmt.Errorf("%w: no consistency proof %d→%d (tree not that large yet)", ErrLogUnavailable, from, to)
	}
	return resp.Proof.Hashes, nil
}
