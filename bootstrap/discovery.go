package bootstrap

import (
	"fmt"
	"os"
	"strings"

	"github.com/kinmesh/kinmesh/protocols/discovery"
)

// Phone verification and private contact discovery
// (/kinmesh/discovery/1.0.0, docs/protocol/discovery.md): every relay
// texts verification codes through its SMS gateway, keeps an OPRF key and
// the directory of its verified numbers, in the "discovery" namespace of
// its store. Its settings are the SMS* and Phone*/Discovery* fields of
// Config; docs/operator-guide.md#sms-gateways explains the gateways.

// SMS gateway names (Config.SMSGateway).
const (
	// SMSConsole writes codes to the relay's log (or Config.SMSConsole)
	// and sends nothing: development and testnets only. The default when
	// no gateway is configured.
	SMSConsole = "console"
	// SMSWebhook POSTs {"to","text"} to Config.SMSWebhookURL.
	SMSWebhook = "webhook"
)

// applyDiscoveryDefaults fills and checks the discovery fields of c.
func (c *Config) applyDiscoveryDefaults() error {
	if c.SMSGateway == "" {
		c.SMSGateway = SMSConsole
		if c.SMSWebhookURL != "" {
			c.SMSGateway = SMSWebhook
		}
	}
	switch c.SMSGateway {
	case SMSConsole:
	case SMSWebhook:
		if c.SMSWebhookURL == "" && c.SMS == nil {
			return fmt.Errorf("%w: sms_gateway = %q needs sms_webhook_url", ErrConfig, SMSWebhook)
		}
	default:
		return fmt.Errorf("%w: sms_gateway %q: want %q or %q", ErrConfig, c.SMSGateway, SMSConsole, SMSWebhook)
	}
	for _, f := range []struct {
		name string
		p    *int
		def  int
	}{
		{"phone_sends_per_day", &c.PhoneSendsPerDay, discovery.DefaultSendsPerDay},
		{"phone_send_burst", &c.PhoneSendBurst, discovery.DefaultSendBurst},
		{"phone_number_sends_per_day", &c.PhoneNumberSendsPerDay, discovery.DefaultNumberSendsPerDay},
		{"phone_number_send_burst", &c.PhoneNumberSendBurst, discovery.DefaultNumberSendBurst},
		{"phone_sms_per_hour", &c.PhoneSMSPerHour, discovery.DefaultSMSPerHour},
		{"phone_sms_per_day", &c.PhoneSMSPerDay, discovery.DefaultSMSPerDay},
		{"discovery_evaluations_per_day", &c.DiscoveryEvaluationsPerDay, discovery.DefaultEvaluationsPerDay},
		{"discovery_evaluation_burst", &c.DiscoveryEvaluationBurst, discovery.DefaultEvaluationBurst},
		{"discovery_max_entries", &c.DiscoveryMaxEntries, discovery.DefaultMaxEntries},
	} {
		if *f.p < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	return nil
}

// smsGateway builds the configured gateway.
func (r *Relay) smsGateway() (discovery.SMSGateway, error) {
	if r.cfg.SMS != nil {
		return r.cfg.SMS, nil
	}
	if r.cfg.SMSGateway == SMSWebhook {
		token := ""
		if f := r.cfg.SMSWebhookTokenFile; f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("%w: sms_webhook_token_file: %v", ErrConfig, err)
			}
			token = strings.TrimSpace(string(b))
		}
		gw, err := discovery.NewWebhookGateway(r.cfg.SMSWebhookURL, token)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		r.log.Info("SMS gateway: webhook")
		return gw, nil
	}
	opt := discovery.ConsoleLogger(r.log)
	if r.cfg.SMSConsole != nil {
		opt = discovery.ConsoleWriter(r.cfg.SMSConsole)
	}
	r.log.Warn("SMS gateway: console (development only): verification codes are written to the log, not sent; set sms_webhook_url for real users")
	return discovery.NewConsoleGateway(opt), nil
}

// startDiscovery starts the discovery service on the relay's host and
// store.
func (r *Relay) startDiscovery() error {
	gw, err := r.smsGateway()
	if err != nil {
		return err
	}
	svc, err := discovery.NewService(r.host, r.store, gw,
		discovery.WithClock(r.cfg.Now),
		discovery.WithLogger(r.log),
		discovery.WithMetricsTracer(discovery.NewMetricsTracer(r.cfg.Registry)),
		discovery.WithSendRate(r.cfg.PhoneSendsPerDay, r.cfg.PhoneSendBurst),
		discovery.WithNumberSendRate(r.cfg.PhoneNumberSendsPerDay, r.cfg.PhoneNumberSendBurst),
		discovery.WithSMSBudget(r.cfg.PhoneSMSPerHour, r.cfg.PhoneSMSPerDay),
		discovery.WithEvaluationRate(r.cfg.DiscoveryEvaluationsPerDay, r.cfg.DiscoveryEvaluationBurst),
		discovery.WithMaxEntries(r.cfg.DiscoveryMaxEntries),
		discovery.WithRequireVerified(!r.cfg.DiscoveryAllowUnverified),
	)
	if err != nil {
		return fmt.Errorf("start discovery service: %w", err)
	}
	r.sms, r.discovery = gw, svc
	return nil
}

// Discovery returns the relay's discovery service (nil before Start).
func (r *Relay) Discovery() *discovery.Service { return r.discovery }

// SMSConsole returns the relay's console SMS gateway, which keeps the
// last code texted to each number (LastCode), or nil when the relay uses
// another gateway. The testnet reads verification codes there.
func (r *Relay) SMSConsole() *discovery.ConsoleGateway {
	gw, _ := r.sms.(*discovery.ConsoleGateway)
	return gw
}
