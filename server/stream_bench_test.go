package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
)

// BenchmarkStreamDeliveries measures what a delivered tile update costs on the live stream
// path (hub → stream handler → HTTP → a headless reader), with the stream's coalescing off
// and at its default: VIGIL_BENCH_STREAMS streams (default 100) follow one patient whose
// observations events are published at VIGIL_BENCH_STREAM_RATE per second (default 100: a
// ward's share of 2,000 uploads/s over 20 wards); b.N events. It reports the process's CPU
// per delivery (server and readers: one process), the readers' reads per delivery (a bound
// on the server's writes) and the p99 publish → read latency. Figures: docs/benchmarks.md.
//
//	go test ./server -run '^$' -bench StreamDeliveries -benchtime 600x
func BenchmarkStreamDeliveries(b *testing.B) {
	streams, rate := 100, 100.0
	if v, err := strconv.Atoi(os.Getenv("VIGIL_BENCH_STREAMS")); err == nil && v > 0 {
		streams = v
	}
	if v, err := strconv.ParseFloat(os.Getenv("VIGIL_BENCH_STREAM_RATE"), 64); err == nil && v > 0 {
		rate = v
	}
	for _, c := range []struct {
		name string
		hold time.Duration
	}{{"coalesce=off", -1}, {"coalesce=default", 0}} {
		b.Run(c.name, func(b *testing.B) {
			s := newCoalesceStackWith(b, Config{StreamCoalesce: c.hold, MaxStreams: streams + 10, MaxStreamsPerCaller: streams + 10}, streamPingEvery)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			q := url.Values{"patient_id": {s.patient.String()}, "type": {core.TypeObservations}}
			var (
				reads   atomic.Int64
				mu      sync.Mutex
				lat     []time.Duration
				done    sync.WaitGroup
				readers sync.WaitGroup
			)
			want := b.N
			for range streams {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.ts.URL+"/api/v1/stream?"+q.Encode(), nil)
				res, err := s.cl.Do(req)
				if err != nil || res.StatusCode != http.StatusOK {
					b.Fatalf("GET /api/v1/stream: %v %v", err, res)
				}
				done.Add(1)
				readers.Add(1)
				go func() {
					defer readers.Done()
					defer res.Body.Close()
					br := bufio.NewReader(countingReader{res.Body, &reads})
					got := 0
					var mine []time.Duration
					for got < want {
						line, err := br.ReadString('\n')
						if err != nil {
							break
						}
						if v, ok := strings.CutPrefix(line, `data: {"id":`); ok {
							k := strings.Index(v, `"t":`)
							if k < 0 {
								continue
							}
							ns, _ := strconv.ParseInt(strings.TrimRight(v[k+4:k+4+19], "},"), 10, 64)
							mine = append(mine, time.Since(time.Unix(0, ns)))
							got++
						}
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
					done.Done()
				}()
			}
			for s.hub.Subscribers() < streams {
				time.Sleep(5 * time.Millisecond) // waiting for the server's goroutines, not for logic
			}
			// About the size of a five-vital observations event.
			pad := strings.Repeat("x", 480)
			interval := time.Duration(float64(time.Second) / rate)
			cpu0 := processCPU()
			b.ResetTimer()
			next := time.Now()
			for i := range b.N {
				next = next.Add(interval)
				time.Sleep(time.Until(next))
				data, _ := json.Marshal(map[string]any{"t": time.Now().UnixNano(), "n": i, "pad": pad})
				s.hub.Publish(core.Event{Type: core.TypeObservations, PatientID: s.patient, Data: data})
			}
			done.Wait()
			b.StopTimer()
			cpu := processCPU() - cpu0
			cancel()
			readers.Wait()
			deliveries := int64(len(lat))
			if deliveries < int64(b.N*streams) {
				b.Fatalf("%d deliveries, want %d", deliveries, b.N*streams)
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(cpu.Microseconds())/float64(deliveries), "cpu-µs/delivery")
			b.ReportMetric(float64(reads.Load())/float64(deliveries), "reads/delivery")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.Logf("%d streams, %.0f events/s, %d deliveries, load average %s", streams, rate, deliveries, loadAvg())
		})
	}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	c.n.Add(1)
	return c.r.Read(p)
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
