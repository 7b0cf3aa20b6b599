package validation

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

//go:embed schema/*.json
var schemaFS embed.FS

const cdxSchemaBase = "http://cyclonedx.org/schema/"

var spdxIDs = func() map[string]bool {
	raw, err := schemaFS.ReadFile("schema/spdx.schema.json")
	if err != nil {
		panic(err)
	}
	var s struct{ Enum []string }
	if err := json.Unmarshal(raw, &s); err != nil {
		panic(err)
	}
	m := make(map[string]bool, len(s.Enum))
	for _, id := range s.Enum {
		m[id] = true
	}
	return m
}()

// SBOMOptions describe the product an SBOM is of.
type SBOMOptions struct {
	Name    string    // default "vigil"
	Version string    // default "dev"
	Time    time.Time // the SBOM's timestamp; default now
	// Serial is the BOM's serial number (a UUID); default a random one.
	Serial uuid.UUID
}

// WriteSBOM writes the inventory as a CycloneDX 1.6 JSON SBOM, made with cyclonedx-go.
func WriteSBOM(w io.Writer, inv *Inventory, opt SBOMOptions) error {
	if opt.Name == "" {
		opt.Name = "vigil"
	}
	if opt.Version == "" {
		opt.Version = "dev"
	}
	if opt.Time.IsZero() {
		opt.Time = time.Now()
	}
	if opt.Serial == uuid.Nil {
		opt.Serial = uuid.New()
	}
	bom := cdx.NewBOM()
	bom.SerialNumber = "urn:uuid:" + opt.Serial.String()
	mainPURL := "pkg:golang/" + inv.Main + "@" + opt.Version
	bom.Metadata = &cdx.Metadata{
		Timestamp: opt.Time.UTC().Format(time.RFC3339),
		Tools: &cdx.ToolsChoice{Components: &[]cdx.Component{{Type: cdx.ComponentTypeApplication, Name: "vigil validate",
			Description: "SBOM from the binary's build information, made with github.com/CycloneDX/cyclonedx-go"}}},
		Component: &cdx.Component{BOMRef: mainPURL, Type: cdx.ComponentTypeApplication, Name: opt.Name, Version: opt.Version,
			PackageURL: mainPURL, Properties: &[]cdx.Property{{Name: "go:version", Value: inv.GoVersion}, {Name: "source", Value: inv.Source}}},
	}
	comps := make([]cdx.Component, 0, len(inv.Components))
	var direct []string
	for _, c := range inv.Components {
		cc := cdx.Component{BOMRef: c.PURL(), Type: cdx.ComponentTypeLibrary, Name: c.Name, Version: c.Version, PackageURL: c.PURL(),
			Scope: cdx.ScopeRequired}
		if c.Licence != "" && c.Licence != "unknown" {
			ids := strings.Split(c.Licence, " AND ")
			allKnown := true
			for _, id := range ids {
				allKnown = allKnown && spdxIDs[id]
			}
			switch {
			case len(ids) == 1 && allKnown:
				cc.Licenses = &cdx.Licenses{{License: &cdx.License{ID: ids[0]}}}
			case allKnown:
				cc.Licenses = &cdx.Licenses{{Expression: c.Licence}}
			default:
				cc.Licenses = &cdx.Licenses{{License: &cdx.License{Name: c.Licence}}}
			}
		}
		var props []cdx.Property
		if c.Purpose != "" {
			props = append(props, cdx.Property{Name: "vigil:purpose", Value: c.Purpose})
		}
		if c.Sum != "" {
			props = append(props, cdx.Property{Name: "go:sum", Value: c.Sum})
		}
		if c.Replace != "" {
			props = append(props, cdx.Property{Name: "go:replace", Value: c.Replace})
		}
		if len(props) > 0 {
			cc.Properties = &props
		}
		comps = append(comps, cc)
		if c.Direct {
			direct = append(direct, c.PURL())
		}
	}
	bom.Components = &comps
	sort.Strings(direct)
	bom.Dependencies = &[]cdx.Dependency{{Ref: mainPURL, Dependencies: &direct}}
	enc := cdx.NewBOMEncoder(w, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	return enc.EncodeVersion(bom, cdx.SpecVersion1_6)
}

var cdxSchema = func() func() (*jsonschema.Schema, error) {
	var sch *jsonschema.Schema
	var err error
	done := false
	return func() (*jsonschema.Schema, error) {
		if done {
			return sch, err
		}
		done = true
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		for _, f := range []string{"bom-1.6.schema.json", "spdx.schema.json", "jsf-0.82.schema.json"} {
			raw, rerr := schemaFS.ReadFile("schema/" + f)
			if rerr != nil {
				err = rerr
				return nil, err
			}
			doc, perr := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
			if perr != nil {
				err = fmt.Errorf("schema %s: %w", f, perr)
				return nil, err
			}
			if err = c.AddResource(cdxSchemaBase+f, doc); err != nil {
				return nil, err
			}
		}
		sch, err = c.Compile(cdxSchemaBase + "bom-1.6.schema.json")
		return sch, err
	}
}()

// ValidateSBOM checks a CycloneDX JSON document against the CycloneDX 1.6 JSON schema
// (embedded; no network).
func ValidateSBOM(doc []byte) error {
	sch, err := cdxSchema()
	if err != nil {
		return fmt.Errorf("CycloneDX schema: %w", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("SBOM is not JSON: %w", err)
	}
	if err := sch.Validate(inst); err != nil {
		return fmt.Errorf("SBOM does not validate against CycloneDX 1.6: %w", err)
	}
	return nil
}

func (e *env) inventory(ctx context.Context) (*Inventory, error) {
	e.invOnce.Do(func() { e.inv, e.invErr = BuildInventory(ctx, e.cfg) })
	return e.inv, e.invErr
}

// sbomGate generates the CycloneDX SBOM and the SOUP list of the build and validates the
// SBOM against the CycloneDX schema.
func sbomGate(ctx context.Context, e *env) Result {
	inv, err := e.inventory(ctx)
	if err != nil {
		return fail("no module inventory", err.Error())
	}
	dir, rel, err := e.dir(GateSBOM)
	if err != nil {
		return fail("evidence", err.Error())
	}
	// A copy: the licences gate reads the shared inventory at the same time.
	own := *inv
	own.Components = append([]Component(nil), inv.Components...)
	inv = &own
	e.annotateVulns(inv)
	var buf bytes.Buffer
	if err := WriteSBOM(&buf, inv, SBOMOptions{Version: e.cfg.Version, Time: e.cfg.Now()}); err != nil {
		return fail("SBOM could not be written", err.Error())
	}
	if err := os.WriteFile(filepath.Join(dir, "sbom.cdx.json"), buf.Bytes(), 0o644); err != nil {
		return fail("evidence", err.Error())
	}
	if err := writeJSONFile(filepath.Join(dir, "soup.json"), inv); err != nil {
		return fail("evidence", err.Error())
	}
	res := Result{Evidence: []string{filepath.Join(rel, "sbom.cdx.json"), filepath.Join(rel, "soup.json")}}
	var goN, npmN, missing int
	for _, c := range inv.Components {
		if c.Ecosystem == "go" {
			goN++
		} else {
			npmN++
		}
		if c.Direct && c.Purpose == "" {
			missing++
			res.Reasons = append(res.Reasons, fmt.Sprintf("direct dependency %s has no purpose in qms/soup-purpose.yaml", c.Name))
		}
	}
	res.Summary = fmt.Sprintf("CycloneDX 1.6: %d Go modules, %d npm packages (%s)", goN, npmN, inv.Source)
	if err := ValidateSBOM(buf.Bytes()); err != nil {
		res.Reasons = append([]string{err.Error()}, res.Reasons...)
		return res
	}
	res.Summary += "; valid against the CycloneDX schema"
	res.Passed = missing == 0
	return res
}

// LicencePolicy is qms/licences.yaml: the licences SOUP may carry, and per-component
// exceptions with their justification.
type LicencePolicy struct {
	Allowed    []string `yaml:"allowed"`
	Exceptions []struct {
		Component string `yaml:"component"`
		Licence   string `yaml:"licence"`
		Reason    string `yaml:"reason"`
	} `yaml:"exceptions"`
}

// LoadLicencePolicy reads the licence allow-list.
func LoadLicencePolicy(file string) (*LicencePolicy, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var p LicencePolicy
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(file), err)
	}
	for _, x := range p.Exceptions {
		if x.Component == "" || x.Licence == "" || strings.TrimSpace(x.Reason) == "" {
			return nil, fmt.Errorf("%s: an exception needs component, licence and reason", filepath.Base(file))
		}
	}
	return &p, nil
}

// Check returns, for each component whose licence is not allowed, why.
func (p *LicencePolicy) Check(inv *Inventory) []string {
	allowed := map[string]bool{}
	for _, a := range p.Allowed {
		allowed[a] = true
	}
	var out []string
	for _, c := range inv.Components {
		excepted := false
		for _, x := range p.Exceptions {
			excepted = excepted || (x.Component == c.Name && x.Licence == c.Licence)
		}
		if excepted {
			continue
		}
		for _, id := range strings.Split(c.Licence, " AND ") {
			if !allowed[id] {
				out = append(out, fmt.Sprintf("%s %s@%s: licence %q is not in the allow-list", c.Ecosystem, c.Name, c.Version, c.Licence))
				break
			}
		}
	}
	return out
}

// licenceGate fails when a SOUP component's licence is neither allowed nor an exception in
// qms/licences.yaml.
func licenceGate(ctx context.Context, e *env) Result {
	pol, err := LoadLicencePolicy(filepath.Join(e.cfg.QMS, "licences.yaml"))
	if err != nil {
		return fail("no licence policy", err.Error())
	}
	inv, err := e.inventory(ctx)
	if err != nil {
		return fail("no module inventory", err.Error())
	}
	dir, rel, err := e.dir(GateLicences)
	if err != nil {
		return fail("evidence", err.Error())
	}
	count := map[string]int{}
	for _, c := range inv.Components {
		count[c.Licence]++
	}
	var parts []string
	for l, n := range count {
		parts = append(parts, fmt.Sprintf("%s %d", l, n))
	}
	sort.Strings(parts)
	bad := pol.Check(inv)
	if err := writeJSONFile(filepath.Join(dir, "licences.json"), map[string]any{"by_licence": count, "not_allowed": bad}); err != nil {
		return fail("evidence", err.Error())
	}
	return Result{Passed: len(bad) == 0, Reasons: bad, Evidence: []string{filepath.Join(rel, "licences.json")},
		Summary: fmt.Sprintf("%d components: %s", len(inv.Components), strings.Join(parts, ", "))}
}
