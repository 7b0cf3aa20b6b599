package report

import (
	"fmt"
	"io"
	"strings"
	"time"

	"codeberg.org/go-pdf/fpdf"
)

// PDFOptions describe the PDF as a whole.
type PDFOptions struct {
	Title   string
	Author  string
	Created time.Time // the PDF's creation date; default now
	Footer  string    // printed at the bottom of every page, left of the page number
}

// ascii replaces the characters the core fonts (Windows-1252) lack with readable stand-ins.
var ascii = strings.NewReplacer("≤", "<=", "≥", ">=", "→", "->", "←", "<-", "↔", "<->", "≈", "~", "✓", "yes",
	"✗", "no", "▲", "", "▼", "", "Δ", "delta", "≠", "!=", "−", "-", "\u00a0", " ", "\u202f", " ", "\u2009", " ",
	"⁻", "-", "¹", "1", "⁰", "0", "⁴", "4", "⁵", "5", "⁶", "6", "⁹", "9")

type pdfWriter struct {
	pdf    *fpdf.Fpdf
	tr     func(string) string
	lineH  float64
	usable float64
}

// WritePDF writes the documents, in order, as one landscape A4 PDF with bookmarks: each
// document starts on a new page.
func WritePDF(w io.Writer, docs []*Doc, opt PDFOptions) error {
	if opt.Created.IsZero() {
		opt.Created = time.Now()
	}
	pdf := fpdf.New("L", "mm", "A4", "")
	pdf.SetCreationDate(opt.Created)
	pdf.SetModificationDate(opt.Created)
	pdf.SetTitle(opt.Title, true)
	pdf.SetAuthor(opt.Author, true)
	pdf.SetCreator("Vigil", true)
	pdf.SetMargins(12, 12, 12)
	pdf.SetAutoPageBreak(true, 14)
	pw := &pdfWriter{pdf: pdf, tr: pdf.UnicodeTranslatorFromDescriptor(""), lineH: 4}
	pageW, _ := pdf.GetPageSize()
	lm, _, rm, _ := pdf.GetMargins()
	pw.usable = pageW - lm - rm
	footer := opt.Footer
	pdf.SetFooterFunc(func() {
		pdf.SetY(-10)
		pdf.SetFont("Helvetica", "", 7)
		pdf.SetTextColor(90, 90, 90)
		pdf.CellFormat(pw.usable/2, 4, pw.tr(ascii.Replace(footer)), "", 0, "L", false, 0, "")
		pdf.CellFormat(pw.usable/2, 4, fmt.Sprintf("page %d", pdf.PageNo()), "", 0, "R", false, 0, "")
		pdf.SetTextColor(0, 0, 0)
	})
	for _, d := range docs {
		pw.doc(d)
	}
	if err := pdf.Error(); err != nil {
		return fmt.Errorf("report: pdf: %w", err)
	}
	return pdf.Output(w)
}

func (p *pdfWriter) text(s string) string { return p.tr(ascii.Replace(s)) }

func (p *pdfWriter) doc(d *Doc) {
	pdf := p.pdf
	pdf.AddPage()
	pdf.Bookmark(p.text(d.Title), 0, -1)
	pdf.SetFont("Helvetica", "B", 15)
	pdf.MultiCell(p.usable, 7, p.text(d.Title), "", "L", false)
	if d.Subtitle != "" {
		pdf.SetFont("Helvetica", "", 9)
		pdf.SetTextColor(70, 70, 70)
		pdf.MultiCell(p.usable, 4.5, p.text(d.Subtitle), "", "L", false)
		pdf.SetTextColor(0, 0, 0)
	}
	pdf.Ln(2)
	for _, b := range d.Blocks {
		switch b := b.(type) {
		case Heading:
			size := 12.0
			if b.Level > 1 {
				size = 10.5
			}
			_, y := pdf.GetXY()
			_, pageH := pdf.GetPageSize()
			if y > pageH-40 {
				pdf.AddPage()
			}
			pdf.Ln(2)
			pdf.Bookmark(p.text(b.Text), b.Level, -1)
			pdf.SetFont("Helvetica", "B", size)
			pdf.MultiCell(p.usable, 6, p.text(b.Text), "", "L", false)
			pdf.Ln(1)
		case Para:
			pdf.SetFont("Helvetica", "", 9)
			pdf.MultiCell(p.usable, 4.5, p.text(b.Text), "", "L", false)
			pdf.Ln(1.5)
		case List:
			pdf.SetFont("Helvetica", "", 9)
			for _, it := range b.Items {
				pdf.MultiCell(p.usable, 4.5, p.text("- "+it), "", "L", false)
			}
			pdf.Ln(1.5)
		case *Table:
			p.table(b)
		}
	}
}

const cellPad = 1.2
const maxCellLines = 30

func (p *pdfWriter) table(t *Table) {
	pdf := p.pdf
	n := len(t.Head)
	if n == 0 {
		return
	}
	widths := make([]float64, n)
	total := 0.0
	for i := range widths {
		widths[i] = 1
		if i < len(t.Widths) && t.Widths[i] > 0 {
			widths[i] = t.Widths[i]
		}
		total += widths[i]
	}
	for i := range widths {
		widths[i] = widths[i] / total * p.usable
	}
	_, pageH := pdf.GetPageSize()
	_, _, _, bm := pdf.GetMargins()
	bottom := pageH - bm - 2
	pdf.SetAutoPageBreak(false, 14)
	defer pdf.SetAutoPageBreak(true, 14)
	var row func(cells []string, header bool)
	row = func(cells []string, header bool) {
		style := ""
		if header {
			style = "B"
		}
		pdf.SetFont("Helvetica", style, 7.5)
		lines := make([][]string, n)
		maxL := 1
		for i := 0; i < n; i++ {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			var ls []string
			// Split the UTF-8 text, then translate each line to the font's code page.
			for _, para := range strings.Split(ascii.Replace(c), "\n") {
				if para == "" {
					ls = append(ls, "")
					continue
				}
				for _, l := range pdf.SplitText(para, widths[i]-2*cellPad) {
					ls = append(ls, p.tr(l))
				}
			}
			if len(ls) > maxCellLines {
				ls = append(ls[:maxCellLines-1], "...")
			}
			lines[i] = ls
			maxL = max(maxL, len(ls))
		}
		h := float64(maxL)*3.4 + 2*cellPad
		x0, y := pdf.GetXY()
		if y+h > bottom {
			pdf.AddPage()
			x0, y = pdf.GetXY()
			if !header {
				row(t.Head, true)
				pdf.SetFont("Helvetica", "", 7.5)
				x0, y = pdf.GetXY()
			}
		}
		x := x0
		for i := 0; i < n; i++ {
			if header {
				pdf.SetFillColor(230, 230, 230)
				pdf.Rect(x, y, widths[i], h, "FD")
			} else {
				if i == t.StatusCol {
					switch statusClass(cellsAt(cells, i)) {
					case "ok":
						pdf.SetFillColor(223, 245, 223)
					case "bad":
						pdf.SetFillColor(249, 214, 213)
					case "warn":
						pdf.SetFillColor(255, 241, 194)
					default:
						pdf.SetFillColor(255, 255, 255)
					}
					pdf.Rect(x, y, widths[i], h, "FD")
				} else {
					pdf.Rect(x, y, widths[i], h, "D")
				}
			}
			for j, l := range lines[i] {
				pdf.SetXY(x+cellPad, y+cellPad+float64(j)*3.4)
				pdf.CellFormat(widths[i]-2*cellPad, 3.4, l, "", 0, "L", false, 0, "")
			}
			x += widths[i]
		}
		pdf.SetXY(x0, y+h)
	}
	row(t.Head, true)
	for _, r := range t.Rows {
		row(r, false)
	}
	pdf.Ln(3)
}

func cellsAt(cells []string, i int) string {
	if i < len(cells) {
		return cells[i]
	}
	return ""
}
