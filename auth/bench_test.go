package auth_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/vigilhealth/vigil/auth"
)

// benchPolicy loads the default (demo) policy with 10,000 users on 40 wards (clinicians, charge
// nurses, and global technicians, quality staff and admins) and 1,000 patients with a care team
// of 3 each, and a few active break-glass grants. Grants are inserted in bulk (not one audited
// change each): the enforcer loads them the same way.
func benchPolicy(b testing.TB) (*env, []*auth.Principal, []auth.Target) {
	return policyOf(b, 10_000)
}

// policyOf is benchPolicy with n users.
func policyOf(b testing.TB, n int) (*env, []*auth.Principal, []auth.Target) {
	e := newEnv(b, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	wards := make([]uuid.UUID, 40)
	for i := range wards {
		wards[i] = uuid.Must(uuid.NewV7())
	}
	users := make([]uuid.UUID, n)
	var rows [][]any
	for i := range users {
		users[i] = uuid.Must(uuid.NewV7())
		sub := auth.UserSubject(users[i])
		switch {
		case i%100 == 0:
			rows = append(rows, []any{"g", sub, auth.RoleAdmin, "*", "", "bench", int64(1)})
		case i%100 == 1:
			rows = append(rows, []any{"g", sub, auth.RoleQuality, "*", "", "bench", int64(1)})
		case i%50 == 2:
			rows = append(rows, []any{"g", sub, auth.RoleDeviceTechnician, "*", "", "bench", int64(1)})
		case i%10 == 3:
			rows = append(rows, []any{"g", sub, auth.RoleChargeNurse, string(auth.WardDomain(wards[i%len(wards)])), "", "bench", int64(1)})
		default:
			rows = append(rows, []any{"g", sub, auth.RoleClinician, string(auth.WardDomain(wards[i%len(wards)])), "", "bench", int64(1)})
			if i%7 == 0 { // some clinicians work on two wards
				rows = append(rows, []any{"g", sub, auth.RoleClinician, string(auth.WardDomain(wards[(i+1)%len(wards)])), "", "bench", int64(1)})
			}
		}
	}
	if _, err := e.pool.CopyFrom(e.ctx, pgx.Identifier{"auth_policy_rules"}, []string{"ptype", "v0", "v1", "v2", "v3", "source", "version"},
		pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	targets := make([]auth.Target, 1_000)
	for i := range targets {
		t := auth.Target{Patient: uuid.Must(uuid.NewV7()), Ward: wards[rng.IntN(len(wards))]}
		for range 3 {
			t.CareTeam = append(t.CareTeam, users[rng.IntN(len(users))].String())
		}
		targets[i] = t
	}
	// Break-glass grants need users rows; 20 grants for 20 users.
	now := e.clock.Now()
	for i := range 20 {
		u := users[10+i*17]
		if _, err := e.pool.Exec(e.ctx, `INSERT INTO auth_users (id, email_index, profile_sealed, status, created_at, updated_at) VALUES ($1, $2, '\x00', 'active', $3, $3)`,
			u, []byte(u.String()), now); err != nil {
			b.Fatal(err)
		}
		if _, err := e.pool.Exec(e.ctx, `INSERT INTO auth_break_glass (id, user_id, patient_id, reason_sealed, opened_at, expires_at) VALUES ($1, $2, $3, '\x00', $4, $5)`,
			uuid.Must(uuid.NewV7()), u, targets[i].Patient, now, now.Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	if err := e.svc.Enforcer().Reload(e.ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("policy of %d grants loaded in %s", len(rows), time.Since(start).Round(time.Millisecond))
	ps := make([]*auth.Principal, len(users))
	for i, u := range users {
		ps[i] = &auth.Principal{Kind: "user", ID: u, Subject: auth.UserSubject(u), AuthMethod: auth.MethodPasswordTOTP}
	}
	return e, ps, targets
}

// BenchmarkAllow measures authorization decisions with the demo policy, 10,000 users and 1,000
// patients: a random user asks to read a random patient's observations or record, or to
// acknowledge an alarm (a quarter of the askers are on the patient's care team). "cold" asks a
// new question each time (the decision memo misses: Casbin evaluates every time); "warm"
// cycles through 4,096 questions (the memo answers, as for a clinician scrolling a ward). It
// reports decisions/s and the p50/p99 of single decisions in wall time and in this thread's
// CPU time (which the other work on a shared machine does not inflate).
func BenchmarkAllow(b *testing.B) {
	e, ps, targets := benchPolicy(b)
	enf := e.svc.Enforcer()
	objs := []string{auth.ObjObservation, auth.ObjPatient, auth.ObjAlarm}
	acts := []string{"read", "read", "acknowledge"}
	type q struct {
		p *auth.Principal
		t auth.Target
		a string
	}
	gen := func(rng *rand.Rand) q {
		k := rng.IntN(len(objs))
		t := targets[rng.IntN(len(targets))]
		t.Object = objs[k]
		x := q{ps[rng.IntN(len(ps))], t, acts[k]}
		if rng.IntN(4) == 0 {
			if u, err := uuid.Parse(t.CareTeam[0]); err == nil {
				x.p = &auth.Principal{Kind: "user", ID: u, Subject: auth.UserSubject(u)}
			}
		}
		return x
	}
	rng := rand.New(rand.NewPCG(3, 4))
	qs := make([]q, 4096)
	allowed := 0
	for i := range qs {
		qs[i] = gen(rng)
		if _, err := enf.Allow(qs[i].p, qs[i].a, qs[i].t); err == nil {
			allowed++
		}
	}
	b.Logf("%d of %d sampled decisions allow", allowed, len(qs))
	for _, mode := range []string{"cold", "warm"} {
		b.Run(mode, func(b *testing.B) {
			// Latency is measured twice: wall time, and the CPU time of this thread (the
			// goroutine is locked to it).
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			lat := make([]time.Duration, 0, 1_000_000)
			cpu := make([]time.Duration, 0, 1_000_000)
			overhead := clockOverhead()
			rng := rand.New(rand.NewPCG(5, 6))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				x := qs[i%len(qs)]
				if mode == "cold" {
					x = gen(rng)
				}
				start, cstart := time.Now(), threadCPU()
				_, _ = enf.Allow(x.p, x.a, x.t)
				if len(lat) < cap(lat) {
					cpu = append(cpu, threadCPU()-cstart-overhead)
					lat = append(lat, time.Since(start))
				}
			}
			b.StopTimer()
			for _, m := range []struct {
				name string
				d    []time.Duration
			}{{"wall", lat}, {"cpu", cpu}} {
				slices.Sort(m.d)
				if len(m.d) > 0 {
					b.ReportMetric(float64(m.d[len(m.d)/2].Nanoseconds())/1000, m.name+"-p50-µs")
					b.ReportMetric(float64(m.d[len(m.d)*99/100].Nanoseconds())/1000, m.name+"-p99-µs")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}

// clockOverhead is the median cost of one threadCPU reading.
func clockOverhead() time.Duration {
	d := make([]time.Duration, 1001)
	for i := range d {
		c := threadCPU()
		d[i] = threadCPU() - c
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// threadCPU is the CPU time consumed by the calling OS thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// BenchmarkVisibility measures computing a clinician's visibility filter.
func BenchmarkVisibility(b *testing.B) {
	e, ps, _ := benchPolicy(b)
	enf := e.svc.Enforcer()
	for i := 0; b.Loop(); i++ {
		if _, err := enf.Visibility(ps[5+(i%1000)*7]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGrantRoles measures enrolling n people into a policy that already holds the grants
// of `existing` people: n users (inserted in bulk: their creation is not what is measured) are
// each granted the clinician role in one of 40 wards with Service.GrantRole, one audited
// policy change each, as an administrator enrolling a hospital would. It reports the cost per
// grant, which stays flat in n and in the policy's size when a grant costs the same whatever
// the policy's size (before: every grant reloaded the whole policy and read every line).
func BenchmarkGrantRoles(b *testing.B) {
	for _, c := range []struct{ existing, n int }{{0, 125}, {0, 500}, {0, 1000}, {10_000, 500}} {
		b.Run(fmt.Sprintf("existing=%d/users=%d", c.existing, c.n), func(b *testing.B) {
			e := newEnv(b, nil)
			wards := make([]uuid.UUID, 40)
			for i := range wards {
				wards[i] = uuid.Must(uuid.NewV7())
			}
			var rows [][]any
			for i := range c.existing {
				rows = append(rows, []any{"g", auth.UserSubject(uuid.Must(uuid.NewV7())), auth.RoleClinician,
					string(auth.WardDomain(wards[i%len(wards)])), "", "bench", int64(1)})
			}
			if _, err := e.pool.CopyFrom(e.ctx, pgx.Identifier{"auth_policy_rules"}, []string{"ptype", "v0", "v1", "v2", "v3", "source", "version"},
				pgx.CopyFromRows(rows)); err != nil {
				b.Fatal(err)
			}
			if err := e.svc.Enforcer().Reload(e.ctx); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				b.StopTimer()
				users := make([]uuid.UUID, c.n)
				now := e.clock.Now()
				for i := range users {
					users[i] = uuid.Must(uuid.NewV7())
					if _, err := e.pool.Exec(e.ctx, `INSERT INTO auth_users (id, email_index, profile_sealed, status, created_at, updated_at)
						VALUES ($1, $2, '\x00', 'active', $3, $3)`, users[i], []byte(users[i].String()), now); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				chunk := time.Now()
				for i, u := range users {
					if err := e.svc.GrantRole(e.ctx, admin, auth.UserSubject(u), auth.RoleClinician, auth.WardDomain(wards[i%len(wards)])); err != nil {
						b.Fatal(err)
					}
					if (i+1)%(c.n/5) == 0 {
						b.Logf("grants %d..%d: %.2f ms/grant", i+1-c.n/5, i+1, float64(time.Since(chunk).Microseconds())/1000/float64(c.n/5))
						chunk = time.Now()
					}
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(c.n), "ms/grant")
			}
		})
	}
}
