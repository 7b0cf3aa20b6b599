package leaf

import (
	"crypto/sha256"
	"fmt"
)

// NodeHash is the RFC 6962 interior node hash SHA-256(0x01 || left || right).
func NodeHash(left, right Hash) Hash {
	var buf [1 + 2*HashSize]byte
	buf[0] = 1
	copy(buf[1:], left[:])
	copy(buf[1+HashSize:], right[:])
	return sha256.Sum256(buf[:])
}

// Tree is an in-memory RFC 6962 Merkle tree over leaf hashes: the tree of one batch.
type Tree struct {
	levels [][]Hash // levels[0] = leaf hashes; last level has one node, the root
}

// NewTree builds the tree over the given leaf hashes (at least one).
func NewTree(leaves []Hash) (*Tree, error) {
	if len(leaves) == 0 {
		return nil, fmt.Errorf("%w: empty tree", ErrMalformed)
	}
	t := &Tree{levels: [][]Hash{leaves}}
	for cur := leaves; len(cur) > 1; {
		next := make([]Hash, 0, (len(cur)+1)/2)
		for i := 0; i+1 < len(cur); i += 2 {
			next = append(next, NodeHash(cur[i], cur[i+1]))
		}
		if len(cur)%2 == 1 {
			next = append(next, cur[len(cur)-1]) // an unpaired right edge moves up unchanged
		}
		t.levels = append(t.levels, next)
		cur = next
	}
	return t, nil
}

// Size is the number of leaves.
func (t *Tree) Size() int { return len(t.levels[0]) }

// Root is the tree's RFC 6962 root hash.
func (t *Tree) Root() Hash { return t.levels[len(t.levels)-1][0] }

// InclusionProof returns the RFC 6962 / RFC 9162 inclusion proof of leaf i, from the leaf's
// sibling up to the root's child.
func (t *Tree) InclusionProof(i int) ([]Hash, error) {
	if i < 0 || i >= t.Size() {
		return nil, fmt.Errorf("inclusion proof: index %d outside tree of size %d", i, t.Size())
	}
	var proof []Hash
	for _, level := range t.levels[:len(t.levels)-1] {
		sib := i ^ 1
		if sib < len(level) {
			proof = append(proof, level[sib])
		}
		i /= 2
	}
	return proof, nil
}

// RootOf returns the RFC 6962 root over leaves.
func RootOf(leaves []Hash) (Hash, error) {
	t, err := NewTree(leaves)
	if err != nil {
		return Hash{}, err
	}
	return t.Root(), nil
}
