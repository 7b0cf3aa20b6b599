package portal

import (
	"io"
	"testing"
	"time"

	"github.com/google/uuid"
)

// BenchmarkRenderWard measures the rendering alone of a ward overview of 50 tiles (no
// database): the share of the page's CPU spent in html/template.
func BenchmarkRenderWard(b *testing.B) {
	a, err := loadAssets()
	if err != nil {
		b.Fatal(err)
	}
	pages, err := parseTemplates(a)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	p := &Portal{cfg: Config{Now: func() time.Time { return now }, NoDataAfter: time.Minute}}
	data := wardData{base: base{Title: "Ward overview", SignedIn: true, CSRF: "x"}, StreamURL: "/api/v1/stream"}
	g := wardGroup{ID: uuid.New(), Name: "Ward 7A"}
	for i := 0; i < 50; i++ {
		t := tile{PatientID: uuid.New(), Name: "Bench Patient", MRN: "MRN-1"}
		p.fill(&t, tileSources{})
		g.Tiles = append(g.Tiles, t)
		data.Patients = append(data.Patients, t.PatientID)
	}
	data.Wards = []wardGroup{g}
	b.ReportAllocs()
	for b.Loop() {
		if err := pages["ward.html"].ExecuteTemplate(io.Discard, "ward.html", data); err != nil {
			b.Fatal(err)
		}
	}
}
