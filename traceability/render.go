package traceability

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Formats are the output formats of a matrix, by file extension.
var Formats = []string{"md", "html", "csv", "json"}

// WriteJSON writes the whole matrix as indented JSON.
func (m *Matrix) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(m)
}

func testNames(ts []TestLink) string {
	var b []string
	for _, t := range ts {
		b = append(b, fmt.Sprintf("%s (%s)", t.Name, t.Status))
	}
	return strings.Join(b, "; ")
}

func passed(ts []TestLink) int {
	n := 0
	for _, t := range ts {
		if t.Status == Pass {
			n++
		}
	}
	return n
}

// WriteCSV writes one row per requirement: id, title, item, class, clauses, status, passing
// and total tests, the tests with their outcomes, and the risks it controls.
func (m *Matrix) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"requirement", "title", "item", "safety_class", "clauses", "status", "tests_passed", "tests", "test_results", "risk_controls_of", "file"})
	for _, r := range m.Requirements {
		_ = cw.Write([]string{r.ID, r.Title, r.Item, r.SafetyClass, strings.Join(r.Clauses, "; "), r.Status,
			strconv.Itoa(passed(r.Tests)), strconv.Itoa(len(r.Tests)), testNames(r.Tests), strings.Join(r.Risks, " "), r.File})
	}
	cw.Flush()
	return cw.Error()
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.Join(strings.Fields(s), " ")
}

// WriteMarkdown writes the matrix as a Markdown document: summary, findings, requirements,
// risks, items.
func (m *Matrix) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	s := m.Summary
	fmt.Fprintf(&b, "# Traceability matrix — %s\n\n", orDash(m.System))
	fmt.Fprintf(&b, "Commit `%s`; generated %s; test run %s – %s.\n\n", m.Commit, m.Generated.Format("2006-01-02 15:04:05Z07:00"),
		m.RunStart.Format("2006-01-02 15:04:05"), m.RunEnd.Format("15:04:05"))
	fmt.Fprintf(&b, "| figure | value |\n|---|---|\n")
	fmt.Fprintf(&b, "| requirements verified by a passing test | **%d / %d (%.1f %%)** |\n", s.Verified, s.Requirements, s.Coverage)
	fmt.Fprintf(&b, "| tests run (top level): passed / failed / skipped | %d: %d / %d / %d |\n", s.Tests, s.Passed, s.Failed, s.Skipped)
	fmt.Fprintf(&b, "| test functions naming requirements | %d |\n", s.TracingTests)
	fmt.Fprintf(&b, "| tests naming no requirement | %d |\n", s.VerifiesNothing)
	fmt.Fprintf(&b, "| risks with every control verified | %d / %d |\n", s.RisksVerified, s.Risks)
	fmt.Fprintf(&b, "| software items (system class) | %d (%s) |\n", s.Items, orDash(s.SystemClass))
	fmt.Fprintf(&b, "| errors | %d |\n\n", s.Errors)
	b.WriteString("## Findings\n\n")
	if len(m.Findings) == 0 {
		b.WriteString("None.\n\n")
	} else {
		b.WriteString("| severity | area | kind | id | detail |\n|---|---|---|---|---|\n")
		for _, f := range m.Findings {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", f.Severity, f.Area, f.Kind, f.ID, mdEscape(f.Detail))
		}
		b.WriteString("\n")
	}
	b.WriteString("## Requirements\n\n| requirement | title | item | class | clauses | status | tests (passed/all) | risks |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range m.Requirements {
		var ts []string
		for _, t := range r.Tests {
			ts = append(ts, fmt.Sprintf("`%s` %s", t.Name, t.Status))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | **%s** | %d/%d: %s | %s |\n", r.ID, mdEscape(r.Title), r.Item, r.SafetyClass,
			mdEscape(strings.Join(r.Clauses, ", ")), r.Status, passed(r.Tests), len(r.Tests), strings.Join(ts, ", "), strings.Join(r.Risks, ", "))
	}
	b.WriteString("\n## Risks\n\n| risk | title | severity | before | after | controls | verified |\n|---|---|---|---|---|---|---|\n")
	for _, r := range m.Risks {
		var cs []string
		for _, c := range r.Controls {
			cs = append(cs, c.ID+" ("+c.Status+")")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s, %s | %s, %s | %s | %v |\n", r.ID, mdEscape(r.Title), r.Severity, r.ProbabilityBefore, r.Before,
			r.ProbabilityAfter, r.After, strings.Join(cs, ", "), r.Verified)
	}
	b.WriteString("\n## Software items\n\n| item | name | class | requirements (verified/all) |\n|---|---|---|---|\n")
	for _, it := range m.Items {
		fmt.Fprintf(&b, "| %s | %s | %s | %d/%d |\n", it.ID, mdEscape(it.Name), it.SafetyClass, it.Verified, len(it.Requirements))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

var htmlTmpl = template.Must(template.New("matrix").Funcs(template.FuncMap{
	"join":   strings.Join,
	"passed": passed,
	"pct":    func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"ts":     func(t any) string { return fmt.Sprint(t) },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Traceability matrix — {{.System}} {{.Commit}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#111}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}
th,td{border:1px solid #bbb;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#eee;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" ▲"} th[aria-sort=descending]::after{content:" ▼"}
.verified,.pass{background:#dff5df} .failing,.fail,.error{background:#f9d6d5} .not-run,.skip,.untested{background:#fff1c2}
code{font-size:12px} small{color:#555}
</style></head><body>
<h1>Traceability matrix — {{.System}}</h1>
<p>Commit <code>{{.Commit}}</code>; generated {{.Generated.Format "2006-01-02 15:04:05Z07:00"}}; test run {{.RunStart.Format "2006-01-02 15:04:05"}} – {{.RunEnd.Format "15:04:05"}}.
Click a column heading to sort.</p>
<table id="summary"><tbody>
<tr><th scope="row">requirements verified by a passing test</th><td><strong>{{.Summary.Verified}} / {{.Summary.Requirements}} ({{pct .Summary.Coverage}} %)</strong></td></tr>
<tr><th scope="row">tests run: passed / failed / skipped</th><td>{{.Summary.Tests}}: {{.Summary.Passed}} / {{.Summary.Failed}} / {{.Summary.Skipped}}</td></tr>
<tr><th scope="row">test functions naming requirements</th><td>{{.Summary.TracingTests}}</td></tr>
<tr><th scope="row">risks with every control verified</th><td>{{.Summary.RisksVerified}} / {{.Summary.Risks}}</td></tr>
<tr><th scope="row">software items (system class)</th><td>{{.Summary.Items}} ({{.Summary.SystemClass}})</td></tr>
<tr><th scope="row">errors</th><td>{{.Summary.Errors}}</td></tr>
</tbody></table>
<h2>Findings</h2>
{{if .Findings}}<table class="sortable"><thead><tr><th>severity</th><th>area</th><th>kind</th><th>id</th><th>detail</th></tr></thead><tbody>
{{range .Findings}}<tr class="{{.Severity}}"><td>{{.Severity}}</td><td>{{.Area}}</td><td>{{.Kind}}</td><td>{{.ID}}</td><td>{{.Detail}}</td></tr>
{{end}}</tbody></table>{{else}}<p>None.</p>{{end}}
<h2>Requirements</h2>
<table class="sortable" id="requirements"><thead><tr><th>requirement</th><th>title</th><th>item</th><th>class</th><th>clauses</th><th>status</th><th>tests</th><th>risks</th></tr></thead><tbody>
{{range .Requirements}}<tr><td id="{{.ID}}">{{.ID}}</td><td>{{.Title}}</td><td>{{.Item}}</td><td>{{.SafetyClass}}</td><td>{{join .Clauses "; "}}</td><td class="{{.Status}}">{{.Status}}</td>
<td data-sort="{{passed .Tests}}">{{range .Tests}}<div class="{{ts .Status}}"><code>{{.Name}}</code> <small>{{.Package}} · {{ts .Status}}</small></div>{{end}}</td><td>{{join .Risks " "}}</td></tr>
{{end}}</tbody></table>
<h2>Risks (ISO 14971)</h2>
<table class="sortable" id="risks"><thead><tr><th>risk</th><th>title</th><th>severity</th><th>probability before</th><th>before</th><th>probability after</th><th>residual</th><th>controls</th><th>verified</th></tr></thead><tbody>
{{range .Risks}}<tr><td>{{.ID}}</td><td>{{.Title}}</td><td>{{.Severity}}</td><td>{{.ProbabilityBefore}}</td><td>{{ts .Before}}</td><td>{{.ProbabilityAfter}}</td><td>{{ts .After}}</td>
<td>{{range .Controls}}<div class="{{.Status}}"><a href="#{{.ID}}">{{.ID}}</a> {{.Status}}</div>{{end}}</td><td class="{{if .Verified}}verified{{else}}failing{{end}}">{{.Verified}}</td></tr>
{{end}}</tbody></table>
<h2>Software items (IEC 62304)</h2>
<table class="sortable" id="items"><thead><tr><th>item</th><th>name</th><th>class</th><th>packages</th><th>requirements verified</th><th>requirements</th></tr></thead><tbody>
{{range .Items}}<tr><td>{{.ID}}</td><td>{{.Name}}</td><td>{{.SafetyClass}}</td><td>{{join .Packages " "}}</td><td>{{.Verified}} / {{len .Requirements}}</td><td>{{join .Requirements " "}}</td></tr>
{{end}}</tbody></table>
<details><summary>{{len .VerifiesNothing}} tests of the run name no requirement</summary>
<table class="sortable"><thead><tr><th>package</th><th>test</th><th>status</th></tr></thead><tbody>
{{range .VerifiesNothing}}<tr><td>{{.Package}}</td><td>{{.Test}}</td><td class="{{ts .Status}}">{{ts .Status}}</td></tr>
{{end}}</tbody></table></details>
<script>
document.querySelectorAll("table.sortable th").forEach(function(th){th.addEventListener("click",function(){
 var table=th.closest("table"),tb=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
 var asc=th.getAttribute("aria-sort")!=="ascending";
 th.parentNode.querySelectorAll("th").forEach(function(h){h.removeAttribute("aria-sort")});
 th.setAttribute("aria-sort",asc?"ascending":"descending");
 var key=function(tr){var td=tr.children[i];return td.dataset.sort!==undefined?td.dataset.sort:td.textContent.trim()};
 Array.from(tb.rows).sort(function(a,b){var x=key(a),y=key(b),nx=parseFloat(x),ny=parseFloat(y);
  var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y,undefined,{numeric:true});return asc?c:-c}).forEach(function(r){tb.appendChild(r)});
})});
</script>
</body></html>
`))

// WriteHTML writes the matrix as one self-contained HTML page with sortable tables.
func (m *Matrix) WriteHTML(w io.Writer) error { return htmlTmpl.Execute(w, m) }

// WriteFiles writes the matrix in every format into dir as <base>.md, .html, .csv and .json,
// and returns the paths written.
func (m *Matrix) WriteFiles(dir, base string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	for _, f := range []struct {
		ext   string
		write func(io.Writer) error
	}{{"md", m.WriteMarkdown}, {"html", m.WriteHTML}, {"csv", m.WriteCSV}, {"json", m.WriteJSON}} {
		p := filepath.Join(dir, base+"."+f.ext)
		fh, err := os.Create(p)
		if err != nil {
			return out, err
		}
		err = f.write(fh)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return out, fmt.Errorf("write %s: %w", p, err)
		}
		out = append(out, p)
	}
	return out, nil
}
