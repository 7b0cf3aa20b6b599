// Package auditreport renders an audit trail extract as a report a person can read (HTML and
// PDF): the period, the checkpoint it is proven under, event counts by type and by actor,
// every event in a table, and the verification result. It takes plain data (Input), filled
// by the caller from a verified audit pack or from one patient's verified events (HIPAA
// accounting of disclosures), so it depends on no audit package.
package auditreport

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vigilhealth/vigil/internal/report"
)

// Event is one audit event of the report.
type Event struct {
	ID         string
	Time       time.Time
	ActorKind  string
	ActorID    string // empty when not revealed
	ActorAuth  string
	Action     string
	ObjectType string
	ObjectID   string // empty when not revealed
	Outcome    string
	Reason     string
	LeafIndex  uint64
	// Proof is "verified" when the event's inclusion under the checkpoint was checked, or
	// the reason it could not be (e.g. "pending: not yet in the log").
	Proof string
}

// Input is the content of a report.
type Input struct {
	Title        string // e.g. "Audit report" or "Access history of patient …"
	Installation string // the log origin
	VerifierKey  string
	From, To     time.Time
	Checkpoint   string // the signed checkpoint note the events are proven under
	TreeSize     uint64
	Checkpoints  int
	Pending      int // events of the period not yet under the checkpoint
	Patient      string
	Verified     bool   // every event verified, and the pack or proofs as a whole
	Result       string // the verification result in words
	Generated    time.Time
	Events       []Event
}

// Docs returns the report as documents: summary, counts, events.
func Docs(in Input) []*report.Doc {
	sub := fmt.Sprintf("%s — events from %s to %s — generated %s", in.Installation, in.From.UTC().Format(time.RFC3339),
		in.To.UTC().Format(time.RFC3339), in.Generated.UTC().Format("2006-01-02 15:04 MST"))
	d := &report.Doc{Name: "audit-report.html", Title: in.Title, Subtitle: sub}
	status := "verified"
	if !in.Verified {
		status = "failed"
	}
	t := report.NewTable("", "")
	t.StatusCol = 1
	t.Widths = []float64{2, 8}
	t.Row("verification", status+": "+in.Result).
		Row("period", fmt.Sprintf("%s – %s (UTC)", in.From.UTC().Format("2006-01-02 15:04:05"), in.To.UTC().Format("2006-01-02 15:04:05"))).
		Row("events", fmt.Sprintf("%d (%d more in the period not yet under the checkpoint)", len(in.Events), in.Pending))
	if in.Patient != "" {
		t.Row("patient", in.Patient)
	}
	t.Row("checkpoint", fmt.Sprintf("tree size %d; %d checkpoints checked for consistency", in.TreeSize, in.Checkpoints)).
		Row("checkpoint key", in.VerifierKey)
	d.Add(t)
	if in.Checkpoint != "" {
		d.Add(report.Heading{Level: 1, Text: "Signed checkpoint"}, report.Para{Text: in.Checkpoint})
	}
	count := func(key func(Event) string) *report.Table {
		m := map[string]int{}
		for _, e := range in.Events {
			m[key(e)]++
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
		t := report.NewTable("", "events")
		t.Widths = []float64{6, 1}
		for _, k := range keys {
			t.Row(k, strconv.Itoa(m[k]))
		}
		return t
	}
	byType := count(func(e Event) string { return e.Action + " (" + e.Outcome + ")" })
	byType.Head[0] = "event type (outcome)"
	byActor := count(func(e Event) string {
		a := e.ActorKind
		if e.ActorID != "" {
			a += " " + e.ActorID
		}
		return a + " (" + e.ActorAuth + ")"
	})
	byActor.Head[0] = "actor (authentication)"
	d.Add(report.Heading{Level: 1, Text: "Events by type"}, byType, report.Heading{Level: 1, Text: "Events by actor"}, byActor)
	ev := report.NewTable("time (UTC)", "event", "actor", "object", "outcome", "leaf", "proof")
	ev.ID, ev.Sortable, ev.StatusCol = "events", true, 6
	ev.Widths = []float64{2.2, 2.6, 2.4, 2.4, 1.2, 0.7, 1}
	for _, e := range in.Events {
		actor := e.ActorKind + " " + e.ActorAuth
		if e.ActorID != "" {
			actor = e.ActorKind + " " + e.ActorID + " (" + e.ActorAuth + ")"
		}
		obj := e.ObjectType
		if e.ObjectID != "" {
			obj += " " + e.ObjectID
		}
		out := e.Outcome
		if e.Reason != "" {
			out += ": " + e.Reason
		}
		ev.Row(e.Time.UTC().Format("2006-01-02 15:04:05.000"), e.Action+"\n"+e.ID, actor, obj, out, strconv.FormatUint(e.LeafIndex, 10), e.Proof)
	}
	d.Add(report.Heading{Level: 1, Text: "Every event"}, ev)
	return []*report.Doc{d}
}

// Write writes the report into dir as <base>.html and <base>.pdf and returns both paths.
func Write(dir, base string, in Input) (htmlPath, pdfPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	docs := Docs(in)
	htmlPath = filepath.Join(dir, base+".html")
	f, err := os.Create(htmlPath)
	if err != nil {
		return "", "", err
	}
	err = docs[0].WriteHTML(f, []report.Link{{Text: "PDF", Href: base + ".pdf"}})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", err
	}
	pdfPath = filepath.Join(dir, base+".pdf")
	f, err = os.Create(pdfPath)
	if err != nil {
		return "", "", err
	}
	err = report.WritePDF(f, docs, report.PDFOptions{Title: in.Title, Author: in.Installation, Created: in.Generated,
		Footer: strings.TrimSpace(in.Title + " — " + in.Installation)})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return htmlPath, pdfPath, err
}
