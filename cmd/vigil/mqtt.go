package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/mqtt"
	"github.com/vigilhealth/vigil/server"
)

// wireMQTT starts MQTT ingestion (devices/mqtt) when VIGIL_MQTT_URL is set: Vigil
// subscribes to <prefix>/+/up on that broker and answers on <prefix>/<id>/receipts. The
// other settings come from VIGIL_MQTT_* variables (docs/devices-sdk.md); the password from
// the environment only. The ingestor stops before the devices service does.
func wireMQTT(ctx context.Context, sys *system, srvCfg *server.Config, svc *devices.Service) error {
	broker := getenv(ctx, "VIGIL_MQTT_URL")
	if broker == "" {
		return nil
	}
	cfg := mqtt.Config{
		Broker:     broker,
		ClientID:   getenv(ctx, "VIGIL_MQTT_CLIENT_ID"),
		Prefix:     getenv(ctx, "VIGIL_MQTT_PREFIX"),
		ShareGroup: getenv(ctx, "VIGIL_MQTT_SHARE_GROUP"),
		Username:   getenv(ctx, "VIGIL_MQTT_USERNAME"),
		ReplyQoS0:  getenv(ctx, "VIGIL_MQTT_REPLY_QOS0") == "1",
		Password:   []byte(getenv(ctx, "VIGIL_MQTT_PASSWORD")),
		Accepter:   svc,
		Recorder:   sys.rec,
		Logger:     slog.Default(),
	}
	tc, err := mqttTLS(getenv(ctx, "VIGIL_MQTT_CACERT"), getenv(ctx, "VIGIL_MQTT_CLIENT_CERT"), getenv(ctx, "VIGIL_MQTT_CLIENT_KEY"))
	if err != nil {
		return err
	}
	cfg.TLS = tc
	if v := getenv(ctx, "VIGIL_MQTT_SESSION_EXPIRY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("VIGIL_MQTT_SESSION_EXPIRY=%q: %w", v, err)
		}
		cfg.SessionExpiry = d
	}
	in, err := mqtt.Start(cfg)
	if err != nil {
		return err
	}
	sys.closers = append(sys.closers, in.Close)
	srvCfg.ReadinessChecks = append(srvCfg.ReadinessChecks, server.ReadinessCheck{Name: "mqtt",
		Check: func(context.Context) (any, error) {
			st := in.Stats()
			detail := map[string]any{"received": st.Received, "accepted": st.Accepted, "rejected": st.Rejected,
				"failed": st.Failed, "connects": st.Connects}
			if st.Received > 0 {
				detail["mean_accept_ms"] = float64(st.AcceptTime.Microseconds()) / float64(st.Received) / 1000
				detail["mean_reply_ms"] = float64(st.ReplyTime.Microseconds()) / float64(st.Received) / 1000
			}
			if !in.Subscribed() {
				return detail, fmt.Errorf("not subscribed to the broker yet")
			}
			return detail, nil
		}})
	slog.InfoContext(ctx, "MQTT ingestion enabled", slog.String("prefix", cfg.Prefix))
	return nil
}

// mqttTLS builds the TLS configuration of the broker connection from PEM files: a CA bundle
// to trust (instead of the system's roots) and a client certificate and key. All empty:
// nil (system roots, no client certificate).
func mqttTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("VIGIL_MQTT_CACERT: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("VIGIL_MQTT_CACERT %s: no PEM certificate in it", caFile)
		}
		tc.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("VIGIL_MQTT_CLIENT_CERT/VIGIL_MQTT_CLIENT_KEY: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
