package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode"

	"github.com/labstack/echo/v4"
)

// Codes of the strict JSON decoder (every JSON request body goes through decodeJSON).
const (
	// CodeInvalidJSON: the body is not one well-formed JSON value of the expected shape
	// (syntax error, data after the value, a member named twice, a wrong type, nesting too
	// deep, or no body where one is required).
	CodeInvalidJSON = "invalid_json"
	// CodeUnknownJSONField: the body has a member the endpoint does not know.
	CodeUnknownJSONField = "unknown_json_field"
	// CodeRequestTimeout: the request's body did not arrive within the read time limit.
	CodeRequestTimeout = "request_timeout"
)

// maxJSONDepth is the deepest nesting of arrays and objects a request body may have.
const maxJSONDepth = 32

// decodeJSON decodes the request's JSON body into v, strictly: the Content-Type must be
// application/json (charset, if given, utf-8), else 415 unsupported_media_type, so that a
// cross-site form or text/plain POST never reaches a handler; the body must be exactly one
// JSON value (nothing but white space after it), no object may name a member twice (also
// not in another letter case, which encoding/json would match to the same field), and every
// member must be one v has; else 400 invalid_json or unknown_json_field. With optional, a
// request without a body leaves v as it is.
func decodeJSON(c echo.Context, v any, optional bool) error {
	req := c.Request()
	ct := req.Header.Get(echo.HeaderContentType)
	if ct != "" && !isJSONMediaType(ct) {
		return &APIError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMedia,
			Message: "send the body as application/json"}
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return bodyReadError(err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional && len(body) == 0 {
			return nil
		}
		return BadRequest(CodeInvalidJSON, "a JSON body is required")
	}
	if ct == "" {
		return &APIError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMedia,
			Message: "send the body as application/json (Content-Type is missing)"}
	}
	if err := checkJSON(body); err != nil {
		return BadRequest(CodeInvalidJSON, "malformed JSON body: "+err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return BadRequest(CodeUnknownJSONField, "unknown member "+f)
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return BadRequest(CodeInvalidJSON, fmt.Sprintf("member %q must be %s, not %s", te.Field, te.Type, te.Value))
		}
		return BadRequest(CodeInvalidJSON, "malformed JSON body: "+strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// isJSONMediaType reports whether a Content-Type header names application/json in UTF-8.
func isJSONMediaType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != echo.MIMEApplicationJSON {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}

// checkJSON walks body's tokens: one value, nothing after it, no duplicate member names
// (compared under Unicode case folding, as encoding/json matches them), nesting at most
// maxJSONDepth.
func checkJSON(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := checkValue(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return nil
}

func checkValue(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxMessage(err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar
	}
	if depth >= maxJSONDepth {
		return fmt.Errorf("nested deeper than %d levels", maxJSONDepth)
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return syntaxMessage(err)
			}
			name, _ := k.(string)
			f := foldName(name)
			if seen[f] {
				return fmt.Errorf("member %q appears more than once", name)
			}
			seen[f] = true
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return syntaxMessage(err)
}

func syntaxMessage(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("unexpected end of the body")
	}
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// foldName maps every rune of s to the smallest rune of its Unicode simple case folding
// orbit, so that two names are equal under foldName exactly when strings.EqualFold says so.
func foldName(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}

// bodyReadError maps a failure to read a request body: over the body limit (413), not
// arrived within the read time limit (408 request_timeout), or cut off (400).
func bodyReadError(err error) error {
	var he *echo.HTTPError
	var mbe *http.MaxBytesError
	var ne interface{ Timeout() bool }
	switch {
	case errors.As(err, &he):
		return he // the server's body limit
	case errors.As(err, &mbe):
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge)
	case errors.As(err, &ne) && ne.Timeout():
		return &APIError{Status: http.StatusRequestTimeout, Code: CodeRequestTimeout,
			Message: "the request body did not arrive within the server's read time limit"}
	}
	return BadRequest(CodeBadRequest, "could not read the request body")
}

// bindJSON decodes a required JSON body strictly (decodeJSON).
func bindJSON(c echo.Context, v any) error { return decodeJSON(c, v, false) }
