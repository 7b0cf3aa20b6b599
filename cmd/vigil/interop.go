package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/vigilhealth/vigil/interop/hl7/inbound"
	"github.com/vigilhealth/vigil/interop/hl7/outbound"
	"github.com/vigilhealth/vigil/interop/mllp"
	"github.com/vigilhealth/vigil/server"
)

// interopHelp is the part of serve's and demo's --help about HL7 v2 (docs/interop.md).
const interopHelp = `

HL7 v2 over MLLP (docs/interop.md), off unless configured (the demo listens for ADT on
127.0.0.1:2575 by default):
  VIGIL_HL7_LISTEN=host:port      listen for inbound ADT (A01 admit or re-admit, A02
                                  transfer, A03 discharge, A08 update, A11/A13 cancel
                                  admit/discharge); patients are found by MRN and
                                  placed on the ward named by PV1-3.1; every message is
                                  answered AA/AE/AR and audited
  VIGIL_HL7_ORU_DEST=host:port    send each stored upload's vitals and each alarm change as
                                  ORU^R01 to this MLLP receiver (ordered per patient, ACKed,
                                  retried, dead-lettered, audited; a durable cursor resumes
                                  after a restart; one replica per database sends; at least
                                  once, MSH-10 stable: receivers should de-duplicate)
  VIGIL_HL7_FACILITY              MSH-4 of Vigil's messages (default VIGIL)
  VIGIL_HL7_ORU_RECEIVING_APP, VIGIL_HL7_ORU_RECEIVING_FACILITY   MSH-5 and MSH-6 of ORU`

// demoHL7Listen is the demo's ADT listener when VIGIL_HL7_LISTEN is not set (the MLLP port
// interface engines use by convention, on loopback).
const demoHL7Listen = "127.0.0.1:2575"

func init() { demoHooks = append(demoHooks, demoInterop) }

// demoInterop prints how to reach the demo's FHIR API and HL7 listener.
func demoInterop(_ context.Context, url string, sys *system) error {
	fmt.Printf("FHIR R4: %s/fhir/R4/metadata; signed in (see above), e.g.\n  curl -b cookies.txt '%s/fhir/R4/Observation?_sort=-date&_count=20&_include=Observation:device'\n", url, url)
	if sys.hl7Addr != "" {
		host, port, _ := net.SplitHostPort(sys.hl7Addr)
		fmt.Printf("HL7 ADT listener (MLLP): %s — e.g. mllp_send -p %s -f a01.hl7 %s (PV1-3.1 names the ward: Ward A (ICU) or Ward B (Surgery))\n", sys.hl7Addr, port, host)
	}
	fmt.Println()
	return nil
}

// wireInterop starts the HL7 v2 interfaces configured by VIGIL_HL7_* (interopHelp). The
// demo listens for ADT on demoHL7Listen unless told otherwise (and goes on without it when
// the port is taken).
func wireInterop(ctx context.Context, sys *system, demo bool) error {
	facility := envOrCtx(ctx, "VIGIL_HL7_FACILITY", "VIGIL")
	addr := getenv(ctx, "VIGIL_HL7_LISTEN")
	if addr == "" && demo {
		addr = demoHL7Listen
	}
	if addr != "" {
		rcv, err := inbound.New(inbound.Config{Applier: inbound.CoreApplier{Core: sys.core}, Audit: sys.rec, Facility: facility})
		if err != nil {
			return err
		}
		srv, err := mllp.NewServer(mllp.ServerConfig{Handler: rcv})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil && demo && getenv(ctx, "VIGIL_HL7_LISTEN") == "" {
			slog.WarnContext(ctx, "demo: no HL7 ADT listener", slog.String("addr", addr), slog.String("error", err.Error()))
			return wireORU(ctx, sys, facility)
		}
		if err != nil {
			return fmt.Errorf("VIGIL_HL7_LISTEN: %w", err)
		}
		sys.hl7Addr = ln.Addr().String()
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, mllp.ErrClosed) {
				slog.Error("HL7 ADT listener stopped", slog.String("error", err.Error()))
			}
		}()
		slog.InfoContext(ctx, "HL7 ADT listener (MLLP)", slog.String("addr", sys.hl7Addr))
		sys.closers = append(sys.closers, srv.Close)
	}
	return wireORU(ctx, sys, facility)
}

// wireORU starts the ORU^R01 feed when VIGIL_HL7_ORU_DEST is set.
func wireORU(ctx context.Context, sys *system, facility string) error {
	if dest := getenv(ctx, "VIGIL_HL7_ORU_DEST"); dest != "" {
		snd, err := outbound.New(outbound.Config{Name: "oru", Addr: dest, Pool: sys.pool, Sealer: sys.keys.PHI(), Audit: sys.rec,
			KeepOnClose: true})
		if err != nil {
			return err
		}
		feed, err := outbound.NewFeed(outbound.FeedConfig{Core: sys.core, Pool: sys.pool, Sender: snd, Facility: facility,
			ReceivingApplication: getenv(ctx, "VIGIL_HL7_ORU_RECEIVING_APP"), ReceivingFacility: getenv(ctx, "VIGIL_HL7_ORU_RECEIVING_FACILITY")})
		if err != nil {
			_ = snd.Close(ctx)
			return err
		}
		fctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := feed.Run(fctx); err != nil {
				slog.Error("HL7 ORU feed stopped", slog.String("error", err.Error()))
			}
		}()
		slog.InfoContext(ctx, "HL7 ORU feed (MLLP)", slog.String("destination", dest))
		sys.closers = append(sys.closers, func(ctx context.Context) error {
			stop()
			wg.Wait()
			return snd.Close(ctx)
		})
	}
	return nil
}

// startFHIRSubscriptions runs the FHIR Subscriptions' durable dispatcher
// (interop/fhir/subscription RunDurable) on every replica: the one that leads
// "fhir-subscriptions" reads the stored uploads and alarms in commit order from its saved
// cursor, so every event is notified once per database, also those stored while Vigil was
// restarting (docs/interop.md#subscriptions); every replica sends the heartbeats due, each
// claimed once per database. Deliveries are core's webhooks.
func startFHIRSubscriptions(sys *system, srv *server.Server) {
	subs := srv.FHIRSubscriptions()
	if subs == nil {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := subs.RunDurable(ctx); err != nil {
			slog.Error("FHIR subscriptions dispatcher stopped", slog.String("error", err.Error()))
		}
	}()
	sys.closers = append(sys.closers, func(context.Context) error { stop(); wg.Wait(); return nil })
}
