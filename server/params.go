package server

import (
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
)

// queryLimit reads the optional `limit` query parameter into *dst: a whole number in
// 1..max, or a 400 with the given stable code. Absent, *dst is left as it is (the domain
// default applies).
func queryLimit(c echo.Context, max int, code string, dst *int) error {
	v := c.QueryParam("limit")
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return BadRequest(code, fmt.Sprintf("limit must be 1..%d", max))
	}
	*dst = n
	return nil
}

// queryUUID reads the optional query parameter name into *dst: a UUID, or a 400 with the
// code "invalid_<name>". Absent, *dst is left as it is.
func queryUUID(c echo.Context, name string, dst *uuid.UUID) error {
	v := c.QueryParam(name)
	if v == "" {
		return nil
	}
	id, err := uuid.Parse(v)
	if err != nil {
		return BadRequest("invalid_"+name, name+" must be a UUID")
	}
	*dst = id
	return nil
}
