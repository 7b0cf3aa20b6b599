package server

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/chain"
)

// auditConsistency serves GET /api/v1/audit/consistency?from=&to=: the RFC 6962 consistency
// proof between two sizes of the audit log and the latest signed checkpoint, for witnesses
// and third parties that kept an older checkpoint (docs/audit.md "Witnessing").
func (s *Server) auditConsistency(c echo.Context) error {
	var size [2]uint64
	for i, name := range []string{"from", "to"} {
		n, err := strconv.ParseUint(c.QueryParam(name), 10, 64)
		if err != nil {
			return BadRequest("invalid_consistency_range", name+" must be a tree size (a positive integer)")
		}
		size[i] = n
	}
	p, err := s.cfg.Audit.ConsistencyProof(c.Request().Context(), size[0], size[1])
	if errors.Is(err, chain.ErrBadRange) {
		return BadRequest("invalid_consistency_range", "need 0 < from ≤ to ≤ the latest checkpoint's size")
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}
