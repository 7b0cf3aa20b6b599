// Package report renders simple documents — headings, paragraphs, lists and tables — as
// self-contained HTML pages and as one PDF (codeberg.org/go-pdf/fpdf, core fonts, no files
// needed at run time). The release evidence pack (qms) and the human audit reports are
// written with it, so both read the same on screen and on paper.
package report

import (
	"fmt"
	"html/template"
	"io"
	"strings"
)

// Block is one element of a document: a Heading, Para, List or Table.
type Block interface{ block() }

// Heading is a section title. Level 1 is the document's own sections, 2 a subsection.
type Heading struct {
	Level int
	Text  string
	ID    string // anchor; optional
}

// Para is a paragraph of plain text. Href, when set, makes it a link (HTML only).
type Para struct {
	Text string
	Href string
}

// List is a bulleted list.
type List struct{ Items []string }

// Table is a table with a header row. Widths are the relative widths of the columns in the
// PDF (default equal). StatusCol, when ≥ 0, names a column whose value ("pass", "verified",
// "fail", …) colours the row's cell in HTML.
type Table struct {
	Head      []string
	Rows      [][]string
	Widths    []float64
	StatusCol int
	ID        string
	Sortable  bool
}

func (Heading) block() {}
func (Para) block()    {}
func (List) block()    {}
func (*Table) block()  {}

// Doc is one document: a page of the HTML pack, a part of the PDF.
type Doc struct {
	Name     string // file name of its HTML page, e.g. "requirements.html"
	Title    string
	Subtitle string
	Blocks   []Block
}

// Add appends blocks and returns the document.
func (d *Doc) Add(b ...Block) *Doc {
	d.Blocks = append(d.Blocks, b...)
	return d
}

// NewTable returns a table with no status column.
func NewTable(head ...string) *Table { return &Table{Head: head, StatusCol: -1} }

// Row appends a row.
func (t *Table) Row(cells ...string) *Table {
	t.Rows = append(t.Rows, cells)
	return t
}

// Link is an entry of the navigation bar of HTML pages.
type Link struct{ Text, Href string }

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"kind": func(b Block) string {
		switch b.(type) {
		case Heading:
			return "h"
		case Para:
			return "p"
		case List:
			return "l"
		case *Table:
			return "t"
		}
		return ""
	},
	"h":     func(b Block) Heading { return b.(Heading) },
	"p":     func(b Block) Para { return b.(Para) },
	"l":     func(b Block) List { return b.(List) },
	"t":     func(b Block) *Table { return b.(*Table) },
	"lvl":   func(h Heading) int { return h.Level + 1 },
	"class": statusClass,
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Doc.Title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#111}
nav{background:#1f3a5f;padding:0.5rem 1.5rem} nav a{color:#fff;margin-right:1rem;text-decoration:none} nav a:hover{text-decoration:underline}
main{padding:1rem 1.5rem;max-width:110rem}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}
th,td{border:1px solid #bbb;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#eee}
table.sortable th{cursor:pointer}
.ok{background:#dff5df} .bad{background:#f9d6d5} .warn{background:#fff1c2}
.sub{color:#444}
</style></head><body>
{{if .Nav}}<nav aria-label="evidence pack">{{range .Nav}}<a href="{{.Href}}">{{.Text}}</a>{{end}}</nav>{{end}}
<main>
<h1>{{.Doc.Title}}</h1>
{{if .Doc.Subtitle}}<p class="sub">{{.Doc.Subtitle}}</p>{{end}}
{{range .Doc.Blocks}}{{$k := kind .}}
{{if eq $k "h"}}{{with h .}}{{if eq (lvl .) 2}}<h2{{if .ID}} id="{{.ID}}"{{end}}>{{.Text}}</h2>{{else}}<h3{{if .ID}} id="{{.ID}}"{{end}}>{{.Text}}</h3>{{end}}{{end}}
{{else if eq $k "p"}}{{with p .}}<p>{{if .Href}}<a href="{{.Href}}">{{.Text}}</a>{{else}}{{.Text}}{{end}}</p>{{end}}
{{else if eq $k "l"}}<ul>{{range (l .).Items}}<li>{{.}}</li>{{end}}</ul>
{{else if eq $k "t"}}{{with t .}}<table{{if .ID}} id="{{.ID}}"{{end}}{{if .Sortable}} class="sortable"{{end}}><thead><tr>{{range .Head}}<th>{{.}}</th>{{end}}</tr></thead><tbody>
{{$sc := .StatusCol}}{{range .Rows}}<tr>{{range $i, $c := .}}<td{{if eq $i $sc}} class="{{class $c}}"{{end}}>{{$c}}</td>{{end}}</tr>
{{end}}</tbody></table>{{end}}{{end}}
{{end}}
</main>
<script>
document.querySelectorAll("table.sortable th").forEach(function(th){th.addEventListener("click",function(){
 var tb=th.closest("table").tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),asc=th.dataset.asc!=="1";
 th.parentNode.querySelectorAll("th").forEach(function(h){delete h.dataset.asc});if(asc){th.dataset.asc="1"}
 Array.from(tb.rows).sort(function(a,b){var x=a.children[i].textContent,y=b.children[i].textContent;
  var c=x.localeCompare(y,undefined,{numeric:true});return asc?c:-c}).forEach(function(r){tb.appendChild(r)});
})});
</script>
</body></html>
`))

// statusClass maps a status word to the CSS class that colours it.
func statusClass(s string) string {
	switch strings.ToLower(strings.Fields(s + " x")[0]) {
	case "pass", "passed", "verified", "ok", "acceptable", "yes", "true", "done", "met":
		return "ok"
	case "fail", "failed", "failing", "unacceptable", "no", "false", "untested", "missing", "open":
		return "bad"
	case "skip", "skipped", "not-run", "alarp", "partial", "note":
		return "warn"
	}
	return ""
}

// WriteHTML writes the document as one HTML page with a navigation bar.
func (d *Doc) WriteHTML(w io.Writer, nav []Link) error {
	if err := pageTmpl.Execute(w, map[string]any{"Doc": d, "Nav": nav}); err != nil {
		return fmt.Errorf("report: %s: %w", d.Name, err)
	}
	return nil
}
