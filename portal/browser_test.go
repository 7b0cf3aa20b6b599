package portal_test

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// -update copies the screenshots the browser tests take into docs/portal/ (commit them when
// the pages change); without it they go to .vigil/screenshots/ only (git-ignored).
var update = flag.Bool("update", false, "copy the browser tests' screenshots into docs/portal/")

// browser starts Debian's chromium (never a downloaded browser) headless with a fresh
// profile and returns a tab's context. Without chromium the test is skipped, unless
// VIGIL_REQUIRE_BROWSER=1 or VIGIL_REQUIRE_INTEROP_TOOLS=1 (make unit), when it fails.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if requireTools() {
			t.Fatal("chromium is not installed (.ci/ensure-chromium installs Debian's chromium)")
		}
		t.Skip("chromium is not installed: run make services (.ci/ensure-chromium)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { cancelT(); cancelC(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium %s: %v", path, err)
	}
	return ctx
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %.60q: %v", js, err)
	}
	return v
}

// waitFor polls a JavaScript predicate until it holds (bounded by the test's context).
func waitFor(t *testing.T, ctx context.Context, what, js string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := chromedp.Run(wctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		html, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		t.Fatalf("waiting for %s: %v\npage text:\n%s", what, err, html)
	}
}

// screenshot saves the page as .vigil/screenshots/<name>.png (and docs/portal/ with -update).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dirs := []string{filepath.Join("..", ".vigil", "screenshots")}
	if *update {
		dirs = append(dirs, filepath.Join("..", "docs", "portal"))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// a11yScript reports, for the current page: form controls without an accessible name, the
// landmarks present, and every element with its own text whose contrast against its
// effective background is below 4.5:1 (WCAG 2.1 AA, 1.4.3).
const a11yScript = `(() => {
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(s => parseFloat(s)); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  const bgOf = (el) => { for (; el; el = el.parentElement) { const c = parse(getComputedStyle(el).backgroundColor);
    if (c && c.a > 0.5) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const out = {unlabelled: [], low: [], landmarks: {
    banner: !!document.querySelector('[role=banner]'), main: !!document.querySelector('main'),
    contentinfo: !!document.querySelector('[role=contentinfo]'),
    navigation: !!document.querySelector('nav[aria-label]') || !document.querySelector('nav')},
    skipFirst: false, minRatio: 99};
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea, button')) {
    let name = '';
    if (el.labels && el.labels.length) name = el.labels[0].textContent.trim();
    if (!name) name = (el.getAttribute('aria-label') || '').trim();
    if (!name && el.getAttribute('aria-labelledby')) { const l = document.getElementById(el.getAttribute('aria-labelledby')); name = l ? l.textContent.trim() : ''; }
    if (!name && el.tagName === 'BUTTON') name = el.textContent.trim();
    if (!name) out.unlabelled.push(el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll('body *')) {
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim() !== '');
    if (!own || el.getClientRects().length === 0) continue;
    const cs = getComputedStyle(el);
    if (cs.visibility === 'hidden' || cs.clip === 'rect(0px, 0px, 0px, 0px)') continue;
    const r = ratio(parse(cs.color), bgOf(el));
    out.minRatio = Math.min(out.minRatio, r);
    if (r < 4.5) out.low.push(el.tagName + '.' + el.className + ' "' + el.textContent.trim().slice(0, 40) + '" ' + r.toFixed(2));
  }
  const f = Array.from(document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, [tabindex]:not([tabindex="-1"])'));
  out.skipFirst = f.length > 0 && f[0].classList.contains('skip-link') && f[0].getAttribute('href') === '#main';
  return out;
})()`

type a11yReport struct {
	Unlabelled []string        `json:"unlabelled"`
	Low        []string        `json:"low"`
	Landmarks  map[string]bool `json:"landmarks"`
	SkipFirst  bool            `json:"skipFirst"`
	MinRatio   float64         `json:"minRatio"`
}

func checkA11y(t *testing.T, ctx context.Context, page string) {
	t.Helper()
	r := eval[a11yReport](t, ctx, a11yScript)
	if len(r.Unlabelled) > 0 {
		t.Errorf("%s: form controls without a label: %v", page, r.Unlabelled)
	}
	if len(r.Low) > 0 {
		t.Errorf("%s: text below 4.5:1 contrast: %v", page, r.Low)
	}
	for l, ok := range r.Landmarks {
		if !ok {
			t.Errorf("%s: no %s landmark", page, l)
		}
	}
	if !r.SkipFirst {
		t.Errorf("%s: the first focusable element is not the skip link to #main", page)
	}
	t.Logf("%s: lowest text contrast %.2f:1", page, r.MinRatio)
}

// focusOrder presses Tab from the top of the page n times and returns, for each step, the
// focused element (id, or tag and text) and whether its focus indicator is visible (an
// outline at least 2 px wide).
func focusOrder(t *testing.T, ctx context.Context, n int) []string {
	t.Helper()
	eval[bool](t, ctx, "document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true")
	var out []string
	for i := 0; i < n; i++ {
		do(t, ctx, "tab", chromedp.KeyEvent(kb.Tab))
		out = append(out, eval[string](t, ctx, `(() => { const e = document.activeElement; const cs = getComputedStyle(e);
		  const vis = cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2;
		  return (e.id ? '#' + e.id : e.tagName.toLowerCase() + ':' + e.textContent.trim()) + (vis ? '' : ' (focus not visible)'); })()`))
	}
	return out
}

// The browser tests: Debian's chromium against a real server on real PostgreSQL. A
// clinician signs in with password and TOTP (keyboard order checked, every control
// labelled, contrast measured), sees the ward overview, a vital uploaded by a device a
// moment ago appears in its tile without a reload, a lost stream is shown and recovered, an
// alarm raised by the rules appears with its IEC 60601-1-8 priority style, whose colours and
// contrast are computed in the browser. Screenshots of each page are saved.
// Verifies: REQ-POR-005, REQ-POR-010, REQ-POR-011, REQ-POR-012
func TestBrowserSignInAndLiveWard(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := browser(t) // after the stack: its cleanup (closing the browser) runs first
	email, secret := s.clinician(t, "clinician", s.ward.ID)

	// Sign-in page: reached by a redirect from the overview.
	do(t, ctx, "open the portal", chromedp.Navigate(s.ts.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#email")))
	if u := eval[string](t, ctx, "location.pathname"); u != "/signin" {
		t.Fatalf("the overview without a session went to %s, want /signin", u)
	}
	checkA11y(t, ctx, "sign-in")
	got := focusOrder(t, ctx, 5)
	want := []string{"a:Skip to main content", "#email", "#password", "#totp", "button:Sign in"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("sign-in focus order = %q, want %q", got, want)
	}
	screenshot(t, ctx, "signin")

	// A wrong code: the coded error next to the field, focus still works.
	do(t, ctx, "wrong code", chromedp.SendKeys(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.SendKeys(chromedp.CSS("#totp"), "000000"), chromedp.Click(chromedp.CSS("button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#signin-error")))
	if code := eval[string](t, ctx, "document.getElementById('signin-error').dataset.code"); code != "invalid_credentials" {
		t.Errorf("error code = %q, want invalid_credentials", code)
	}
	checkA11y(t, ctx, "sign-in with an error")
	screenshot(t, ctx, "signin-error")

	// Sign in with the right code.
	s.Clock.Add(30 * time.Second)
	eval[bool](t, ctx, "document.getElementById('password').value = '', document.getElementById('totp').value = '', true")
	do(t, ctx, "sign in", chromedp.SendKeys(chromedp.CSS("#password"), password), chromedp.SendKeys(chromedp.CSS("#totp"), s.code(t, secret)),
		chromedp.Click(chromedp.CSS("button[type=submit]")), chromedp.WaitVisible(chromedp.CSS("#ward")))
	waitFor(t, ctx, "live updates on", `document.getElementById('live-status').dataset.state === 'live'`)
	p0, p1 := s.patients[0].ID.String(), s.patients[1].ID.String()
	hr := fmt.Sprintf(`#tile-%s .vital[data-code="8867-4"]`, p0)
	if v := eval[string](t, ctx, fmt.Sprintf("document.querySelector('%s .value').textContent", hr)); v != "—" {
		t.Fatalf("heart rate before any upload = %q, want —", v)
	}
	eval[bool](t, ctx, "window.__vigilNoReload = true")

	// A device uploads; the tile shows the value without a reload.
	s.Clock.Add(5 * time.Second)
	s.upload(t, 5)
	waitFor(t, ctx, "the uploaded heart rate in the tile",
		fmt.Sprintf(`(() => { const v = document.querySelector('%s:not(.missing) .value'); return !!v && v.textContent === '72' && window.__vigilNoReload === true; })()`, hr))
	if st := eval[string](t, ctx, fmt.Sprintf("document.querySelector('#tile-%s .device').dataset.status", p0)); st != "online" {
		t.Errorf("device status after an upload = %q, want online", st)
	}

	// The stream is lost: the page says so, then recovers and shows what it missed.
	s.ts.CloseClientConnections()
	waitFor(t, ctx, "the paused state", `document.getElementById('live-status').dataset.state === 'paused'`)
	if txt := eval[string](t, ctx, "document.getElementById('live-status').textContent"); !strings.Contains(txt, "paused") {
		t.Errorf("live status while lost = %q", txt)
	}
	s.Clock.Add(5 * time.Second)
	s.uploadHR(t, 118)
	waitFor(t, ctx, "live again with the value uploaded meanwhile",
		fmt.Sprintf(`document.getElementById('live-status').dataset.state === 'live' && document.querySelector('%s .value').textContent === '118' && window.__vigilNoReload === true`, hr))

	// The rules raise alarms for another patient: the tile shows them, by priority.
	now := s.Clock.Now()
	if _, err := s.rules.Evaluate(s.Ctx, s.patients[1].ID, []rules.Observation{
		{PatientID: s.patients[1].ID, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: s.patients[1].ID, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now},
		{PatientID: s.patients[1].ID, Code: rules.CodeBodyTemperature, Value: 39.4, Unit: "Cel", EffectiveAt: now},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the alarms in the tile", fmt.Sprintf(`!!document.querySelector('#tile-%s li.alarm-high') && !!document.querySelector('#tile-%s li.alarm-medium')`, p1, p1))
	checkA11y(t, ctx, "ward overview")
	got = focusOrder(t, ctx, 4)
	want = []string{"a:Skip to main content", "a:Ward overview", "a:Alarm inbox", "button:Sign out"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("ward overview focus order = %q, want %q", got, want)
	}
	checkPriorityStyles(t, ctx)
	eval[bool](t, ctx, "document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true")
	screenshot(t, ctx, "ward-overview")
}

type styleReport struct {
	Class  string    `json:"class"`
	FG     []float64 `json:"fg"`
	BG     []float64 `json:"bg"`
	Radius string    `json:"radius"`
	Border string    `json:"border"`
	Text   string    `json:"text"`
}

// checkPriorityStyles computes, in the browser, the colours and shapes of the three alarm
// priorities (the legend in the footer shows all three): high red, medium yellow, low cyan,
// text contrast ≥ 4.5:1, and each distinct from the others by shape and text as well.
func checkPriorityStyles(t *testing.T, ctx context.Context) {
	t.Helper()
	rs := eval[[]styleReport](t, ctx, `['high', 'medium', 'low'].map(p => { const e = document.querySelector('.footer .alarm-' + p);
	  const cs = getComputedStyle(e); const num = (c) => c.match(/[\d.]+/g).slice(0, 3).map(Number);
	  return {class: p, fg: num(cs.color), bg: num(cs.backgroundColor), radius: cs.borderTopLeftRadius, border: cs.borderTopStyle, text: e.textContent.trim()}; })`)
	if len(rs) != 3 {
		t.Fatalf("priority styles = %v", rs)
	}
	hue := func(c []float64) string {
		r, g, b := c[0], c[1], c[2]
		switch {
		case r > 150 && g < 90 && b < 90:
			return "red"
		case r > 200 && g > 170 && b < 90:
			return "yellow"
		case r < 90 && g > 150 && b > 150:
			return "cyan"
		}
		return fmt.Sprint(c)
	}
	wantHue := map[string]string{"high": "red", "medium": "yellow", "low": "cyan"}
	wantSym := map[string]string{"high": "!!! High", "medium": "!! Medium", "low": "! Low"}
	shapes, texts := map[string]bool{}, map[string]bool{}
	for _, r := range rs {
		if h := hue(r.BG); h != wantHue[r.Class] {
			t.Errorf("%s priority background = %s, want %s (IEC 60601-1-8)", r.Class, h, wantHue[r.Class])
		}
		if c := contrast(r.FG, r.BG); c < 4.5 {
			t.Errorf("%s priority contrast = %.2f:1, want ≥ 4.5:1", r.Class, c)
		} else {
			t.Logf("%s priority: %s on %s, contrast %.2f:1, border %s radius %s", r.Class, fmt.Sprint(r.FG), fmt.Sprint(r.BG), c, r.Border, r.Radius)
		}
		if r.Text != wantSym[r.Class] {
			t.Errorf("%s priority text = %q, want %q", r.Class, r.Text, wantSym[r.Class])
		}
		shapes[r.Radius+" "+r.Border] = true
		texts[r.Text] = true
	}
	if len(shapes) != 3 || len(texts) != 3 {
		t.Errorf("the priorities are not distinct by shape and text: %v", rs)
	}
}

// contrast is the WCAG 2.1 contrast ratio of two sRGB colours.
func contrast(a, b []float64) float64 {
	lin := func(v float64) float64 {
		v /= 255
		if v <= 0.03928 {
			return v / 12.92
		}
		return math.Pow((v+0.055)/1.055, 2.4)
	}
	l := func(c []float64) float64 { return 0.2126*lin(c[0]) + 0.7152*lin(c[1]) + 0.0722*lin(c[2]) }
	x, y := l(a), l(b)
	return (math.Max(x, y) + 0.05) / (math.Min(x, y) + 0.05)
}

// uploadHR sends one signed upload with one heart-rate sample of value v, taken now.
func (s *stack) uploadHR(t *testing.T, v float64) {
	t.Helper()
	d := s.device
	d.Seq++
	now := s.Clock.Now()
	raw := d.Sign(t, &envelope.Upload{Device: d.ID.String(), KeyVersion: d.KV, Seq: d.Seq, SentAt: now.UnixMilli(),
		Samples: []envelope.Sample{{Code: "8867-4", Value: v, Unit: "/min", T: now.UnixMilli()}}})
	s.postUpload(t, raw)
}
