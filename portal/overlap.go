package portal

import (
	"bytes"
	"fmt"
	"log/slog"
	"sync"

	"github.com/labstack/echo/v4"
)

// renderBytes executes a page template into memory (render writes the answer; this lets a
// handler render while something else finishes, then send).
func (p *Portal) renderBytes(c echo.Context, name string, data any) ([]byte, error) {
	t, ok := p.pages[name]
	if !ok {
		return nil, fmt.Errorf("portal: no page %q", name)
	}
	var b bytes.Buffer
	b.Grow(64 << 10)
	if err := t.ExecuteTemplate(&b, name, data); err != nil {
		p.log.ErrorContext(c.Request().Context(), "portal render failed", slog.String("page", name), slog.String("error", err.Error()))
		return nil, fmt.Errorf("portal: render %s: %w", name, err)
	}
	return b.Bytes(), nil
}

// all runs the functions concurrently and returns the first error (in argument order) once
// all have returned: independent reads of one page, so that the page waits for the slowest
// round trip rather than their sum.
func all(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, f := range fns {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f() }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
