package mqtt_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/devices/mqtt"
	"github.com/vigilhealth/vigil/devices/mqttwire"
	"github.com/vigilhealth/vigil/devices/sdk"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
	"github.com/vigilhealth/vigil/internal/cpuacct"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkMQTTUploads measures signed uploads of 10 samples end to end over MQTT on
// loopback: a device publishes (QoS 1) on its up topic, Mosquitto delivers to Vigil's
// shared subscription, Vigil verifies, stores and audits the upload (group commit in
// PostgreSQL) and publishes the signed receipt, which the device receives. Each device has
// one upload in flight (closed loop). Envelopes are signed before the timer starts.
//
//	go test ./devices/mqtt -run '^$' -bench BenchmarkMQTTUploads -benchtime 20000x
//
// VIGIL_BENCH_DEVICES (default 256), VIGIL_BENCH_WORKERS (Vigil's workers, default 1024) and
// VIGIL_BENCH_CONNS (device-side connections, default 8) tune the load;
// VIGIL_BENCH_REPLY_QOS0=1 has Vigil publish its replies at QoS 0 (Config.ReplyQoS0).
//
// Verifies: REQ-DEV-100
func BenchmarkMQTTUploads(b *testing.B) {
	nDev := envInt("VIGIL_BENCH_DEVICES", 256)
	nWorkers := envInt("VIGIL_BENCH_WORKERS", 1024)
	nConns := envInt("VIGIL_BENCH_CONNS", 8)
	st := simtest.New(b, func(c *devices.Config) { c.RatePerSecond, c.SampleQuotaPerHour = -1, -1 })
	prefix := "vigilbench/" + strings.ReplaceAll(uuid.NewString()[:8], "-", "") + "/devices"
	in, err := mqtt.Start(mqtt.Config{Broker: brokerURL(), Prefix: prefix, Accepter: st.Devices, Recorder: st.Rec,
		Workers: nWorkers, ReceiveMaximum: 65535, ReplyQoS0: os.Getenv("VIGIL_BENCH_REPLY_QOS0") != "", ShareGroup: "bench" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = in.Close(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := in.Ready(ctx); err != nil {
		b.Fatal(err)
	}
	ids := make([]sdk.Identity, nDev)
	for i := range ids {
		ids[i] = st.Device(b)
	}
	// Pre-sign b.N uploads, spread over the devices, 10 samples each.
	per := (b.N + nDev - 1) / nDev
	envs := make([][][]byte, nDev)
	hashes := make([][][32]byte, nDev)
	now := time.Now()
	total := 0
	for d := range ids {
		for j := 0; j < per && total < b.N; j++ {
			t := now.Add(time.Duration(j) * time.Millisecond)
			ss := make([]envelope.Sample, 10)
			for k := range ss {
				ss[k] = envelope.Sample{Code: "8867-4", Value: float64(60 + k), Unit: "/min", T: t.Add(-time.Duration(k) * time.Second).UnixMilli()}
			}
			u := envelope.Upload{Device: ids[d].DeviceID, KeyVersion: 1, Seq: uint64(j + 1), SentAt: t.UnixMilli(), Samples: ss}
			raw, body, err := envelope.Sign(&u, ids[d].PrivateKey)
			if err != nil {
				b.Fatal(err)
			}
			envs[d] = append(envs[d], raw)
			hashes[d] = append(hashes[d], envelope.Hash(body))
			total++
		}
	}
	// Device-side connections, each subscribed to every device's receipts.
	var waiters sync.Map // [32]byte → chan *mqtt.Reply
	u, _ := url.Parse(brokerURL())
	conns := make([]*autopaho.ConnectionManager, nConns)
	for i := range conns {
		up := make(chan struct{})
		var once sync.Once
		cm, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{
			ServerUrls: []*url.URL{u}, KeepAlive: 30, CleanStartOnInitialConnection: true,
			OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
				go func() {
					if _, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: prefix + "/+/receipts", QoS: 1}}}); err == nil {
						once.Do(func() { close(up) })
					}
				}()
			},
			ClientConfig: paho.ClientConfig{
				ClientID: fmt.Sprintf("bench-%s-%d", uuid.NewString()[:8], i),
				OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
					r, err := mqttwire.ParseReply(pr.Packet.Payload)
					if err != nil {
						return true, nil
					}
					if h, ok := r.UploadHash(); ok {
						if ch, ok := waiters.LoadAndDelete(h); ok {
							ch.(chan *mqtt.Reply) <- r
						}
					}
					return true, nil
				}},
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = cm.Disconnect(context.Background()) }()
		<-up
		conns[i] = cm
	}
	lat := make([][]time.Duration, nDev)
	var rejected atomic.Int64
	var firstErr atomic.Value
	b.ResetTimer()
	cpu0 := cpuacct.Take(ctx, st.Pool, "mosquitto")
	start := time.Now()
	var wg sync.WaitGroup
	for d := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cm := conns[d%nConns]
			topic := mqttwire.UpTopic(prefix, ids[d].DeviceID)
			for j, raw := range envs[d] {
				ch := make(chan *mqtt.Reply, 1)
				waiters.Store(hashes[d][j], ch)
				t0 := time.Now()
				if _, err := cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: raw}); err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				select {
				case r := <-ch:
					lat[d] = append(lat[d], time.Since(t0))
					if r.Status != mqtt.StatusAccepted {
						rejected.Add(1)
						firstErr.CompareAndSwap(nil, r.Error.Code+": "+r.Error.Message)
					}
				case <-ctx.Done():
					firstErr.CompareAndSwap(nil, "timeout waiting for a reply")
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuacct.Between(cpu0, cpuacct.Take(ctx, st.Pool, "mosquitto"))
	b.StopTimer()
	if e := firstErr.Load(); e != nil {
		b.Fatalf("%d uploads not accepted; first problem: %v", rejected.Load(), e)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	n := len(all)
	if n != total {
		b.Fatalf("%d replies, want %d", n, total)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "uploads/s")
	sts := in.Stats()
	b.ReportMetric(float64(sts.AcceptTime.Microseconds())/float64(max(sts.Received, 1))/1000, "accept-ms")
	b.ReportMetric(float64(sts.ReplyTime.Microseconds())/float64(max(sts.Received, 1))/1000, "reply-ms")
	b.ReportMetric(float64(10*n)/elapsed.Seconds(), "samples/s")
	b.ReportMetric(float64(all[n/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[min(n-1, n*99/100)].Microseconds())/1000, "p99-ms")
	reportCPU(b, cpu, n)
}

// reportCPU adds the CPU spent per upload (internal/cpuacct): this process (Vigil and the
// simulated devices), PostgreSQL, Mosquitto when it ran on this host, and the CPU-bound
// ceiling on this machine's cores.
func reportCPU(b *testing.B, r cpuacct.Report, n int) {
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	b.ReportMetric(per(r.Self), "proc-µs/upload")
	if r.PGOK {
		b.ReportMetric(per(r.PG), "pg-µs/upload")
	}
	if t, ok := r.Named["mosquitto"]; ok && t > 0 {
		b.ReportMetric(per(t), "mosquitto-µs/upload")
	}
	if c := r.Ceiling(int64(n), runtime.NumCPU()); c > 0 {
		b.ReportMetric(c, "cpu-ceiling-uploads/s")
	}
}

// BenchmarkAcceptInProcess is the baseline for BenchmarkMQTTUploads: the same uploads handed
// to devices.Service.Accept directly by as many goroutines as there are devices, no
// transport at all.
//
//	go test ./devices/mqtt -run '^$' -bench BenchmarkAcceptInProcess -benchtime 20000x
//
// Verifies: REQ-DEV-100
func BenchmarkAcceptInProcess(b *testing.B) {
	nDev := envInt("VIGIL_BENCH_DEVICES", 256)
	st := simtest.New(b, func(c *devices.Config) { c.RatePerSecond, c.SampleQuotaPerHour = -1, -1 })
	ids := make([]sdk.Identity, nDev)
	for i := range ids {
		ids[i] = st.Device(b)
	}
	per := (b.N + nDev - 1) / nDev
	now := time.Now()
	envs := make([][][]byte, nDev)
	total := 0
	for d := range ids {
		for j := 0; j < per && total < b.N; j++ {
			t := now.Add(time.Duration(j) * time.Millisecond)
			ss := make([]envelope.Sample, 10)
			for k := range ss {
				ss[k] = envelope.Sample{Code: "8867-4", Value: float64(60 + k), Unit: "/min", T: t.Add(-time.Duration(k) * time.Second).UnixMilli()}
			}
			u := envelope.Upload{Device: ids[d].DeviceID, KeyVersion: 1, Seq: uint64(j + 1), SentAt: t.UnixMilli(), Samples: ss}
			raw, _, err := envelope.Sign(&u, ids[d].PrivateKey)
			if err != nil {
				b.Fatal(err)
			}
			envs[d] = append(envs[d], raw)
			total++
		}
	}
	lat := make([][]time.Duration, nDev)
	var failed atomic.Value
	b.ResetTimer()
	cpu0 := cpuacct.Take(context.Background(), st.Pool)
	start := time.Now()
	var wg sync.WaitGroup
	for d := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, raw := range envs[d] {
				t0 := time.Now()
				if _, err := st.Devices.Accept(context.Background(), raw, devices.Meta{Transport: "bench"}); err != nil {
					failed.CompareAndSwap(nil, err.Error())
					return
				}
				lat[d] = append(lat[d], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuacct.Between(cpu0, cpuacct.Take(context.Background(), st.Pool))
	b.StopTimer()
	if e := failed.Load(); e != nil {
		b.Fatalf("Accept failed: %v", e)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	n := len(all)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "uploads/s")
	b.ReportMetric(float64(all[n/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[min(n-1, n*99/100)].Microseconds())/1000, "p99-ms")
	reportCPU(b, cpu, n)
}
