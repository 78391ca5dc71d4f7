package connector

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
)

// The remote side: one HTTP client, requests with the configured headers,
// retries while the remote is down, and the JSON-RPC errors the client
// gets when the remote refuses.

// newHTTPClient returns the client of every request to the remote. It
// keeps a connection for each request that may be in flight, so that
// concurrent calls do not open and close connections.
func newHTTPClient(insecure bool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = maxInFlight + 2 // and the GET stream, and a notification
	if insecure {
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return &http.Client{Transport: t}
}

// Header values set on every request of a kind, shared rather than
// allocated per request.
var (
	contentJSON = []string{"application/json"}
	acceptPost  = []string{"application/json, text/event-stream"}
	acceptSSE   = []string{"text/event-stream"}
)

// newRequest returns a request to u with the configured headers and the
// current credentials.
func (c *connector) newRequest(ctx context.Context, method, u string, body []byte) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, err
	}
	for name, values := range c.cfg.Header {
		req.Header[name] = values
	}
	if body != nil {
		req.Header["Content-Type"] = contentJSON
		req.Header["Accept"] = acceptPost
	} else if method == http.MethodGet {
		req.Header["Accept"] = acceptSSE
	}
	if c.cfg.Auth != nil {
		if err := c.cfg.Auth.Apply(ctx, req.Header); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// unreachableError is a request given up after the remote stayed
// unreachable for RetryFor.
type unreachableError struct {
	url      string
	reason   string
	retryFor time.Duration
}

func (e *unreachableError) Error() string {
	if e.retryFor <= 0 {
		return "the remote MCP server " + e.url + " is unreachable: " + e.reason
	}
	return fmt.Sprintf("the remote MCP server %s is unreachable (tried for %v): %s", e.url, e.retryFor, e.reason)
}

// Backoff between attempts while the remote is down.
const (
	firstBackoff = 100 * time.Millisecond
	maxBackoff   = 2 * time.Second
)

// nextBackoff doubles a wait, from firstBackoff up to maxBackoff.
func nextBackoff(d time.Duration) time.Duration {
	if d < firstBackoff {
		return firstBackoff
	}
	return min(2*d, maxBackoff)
}

// do sends the request that build makes, and again while the remote is
// down: a connection that fails before the response, or a 502, 503 or
// 504 (a proxy whose upstream is down, a server starting or stopping).
// The first retry is at once (a kept-alive connection the server had
// just closed), then after 100 ms, doubling to 2 s, for up to RetryFor.
// sent, if set, is called once the request is written or first failed.
// A 401, when Config.Auth gets new credentials, is sent again once.
func (c *connector) do(ctx context.Context, build func(context.Context) (*http.Request, error), sent func()) (*http.Response, error) {
	if sent != nil {
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { sent() }})
	}
	var giveUp time.Time
	var delay time.Duration
	reauthorized := false
	for {
		req, err := build(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.client.Do(req)
		var reason string
		switch {
		case err == nil && resp.StatusCode == http.StatusUnauthorized && c.cfg.Auth != nil && !reauthorized:
			reauthorized = true
			again, aerr := c.cfg.Auth.Refused(ctx, resp)
			if aerr != nil {
				discard(resp)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("the remote MCP server %s requires authorization, which failed: %w", c.redactedURL(), aerr)
			}
			if !again {
				return resp, nil
			}
			discard(resp)
			continue
		case err == nil && !retryStatus(resp.StatusCode):
			return resp, nil
		case err == nil:
			reason = resp.Status
			discard(resp)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case !retryable(err):
			return nil, fmt.Errorf("the remote MCP server %s: %s", c.redactedURL(), errText(err))
		default:
			reason = errText(err)
		}
		if sent != nil {
			sent()
		}
		now := time.Now()
		if giveUp.IsZero() {
			giveUp = now.Add(max(c.cfg.RetryFor, 0))
			if c.cfg.RetryFor > 0 {
				c.log.Warn("the remote is unreachable; retrying", zap.String("reason", reason), zap.Duration("retry_for", c.cfg.RetryFor))
			}
		}
		if now.Add(delay).After(giveUp) {
			return nil, &unreachableError{url: c.redactedURL(), reason: reason, retryFor: c.cfg.RetryFor}
		}
		if !sleep(ctx, delay) {
			return nil, ctx.Err()
		}
		delay = nextBackoff(delay)
	}
}

// retryStatus reports whether a status says the remote is down for now.
func retryStatus(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

// retryable reports whether a request that failed without a response may
// succeed later: anything but a certificate or TLS error, which retrying
// does not change.
func retryable(err error) bool {
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verification *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	return !errors.As(err, &unknownAuthority) && !errors.As(err, &hostname) && !errors.As(err, &invalid) &&
		!errors.As(err, &verification) && !errors.As(err, &record)
}

// errText is a request's error without the method and URL that net/http
// puts first: the URL may hold a credential, and the caller says which
// remote it was.
func errText(err error) string {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return err.Error()
}

// redactedURL is the remote's URL without its query, which may hold a
// credential, for messages and logs.
func (c *connector) redactedURL() string {
	u := *c.endpoint
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

// discard reads a little of a body that does not matter, so that its
// connection can be kept, and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// mediaType is the media type of a Content-Type header, lowercased.
func mediaType(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	return mt
}

// refusal is the JSON-RPC error the client gets for request id when the
// remote answered with an error status. A JSON-RPC error in the body
// passes through, with the request's id when the remote could not know it
// (a stateless request refused before its body was read answers
// "id": null; a client that speaks both protocols falls back to
// initialize on it). A refused credential is always explained, with the
// hint of how to give another.
func (c *connector) refusal(id []byte, resp *http.Response) []byte {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var rpcError, message []byte
	if jsonrpc.Valid(body) {
		if env, err := jsonrpc.ParseEnvelope(body); err == nil && env.Error != nil && env.Result == nil {
			rpcError, message = env.Error, jsonrpc.Member(env.Error, "message")
			if bytes.Equal(env.ID, id) && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
				return body
			}
		}
	}
	detail := jsonrpc.StringValue(message)
	if detail == "" {
		detail = challengeDescription(resp.Header.Get("WWW-Authenticate"))
	}
	if detail == "" && rpcError == nil {
		detail = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		msg := "the remote MCP server " + c.redactedURL() + " refused the credentials: " + resp.Status
		if detail != "" {
			msg += " (" + detail + ")"
		}
		if strings.Contains(resp.Header.Get("WWW-Authenticate"), "resource_metadata") && c.cfg.Auth == nil {
			msg += "; it takes OAuth access tokens"
		}
		if c.cfg.AuthHint != "" {
			msg += "; " + c.cfg.AuthHint
		}
		return jsonrpc.ErrorResponse(id, jsonrpc.CodeUnauthorized, msg)
	}
	if rpcError != nil {
		return withError(id, rpcError)
	}
	msg := "the remote MCP server " + c.redactedURL() + " answered " + resp.Status
	if detail != "" {
		msg += ": " + detail
	}
	return jsonrpc.ErrorResponse(id, jsonrpc.CodeInternalError, msg)
}

// challengeDescription is the error_description of a WWW-Authenticate
// challenge, or its error code, or "".
func challengeDescription(challenge string) string {
	for _, key := range []string{"error_description", "error"} {
		_, rest, ok := strings.Cut(challenge, key+`="`)
		if !ok {
			continue
		}
		if value, _, ok := strings.Cut(rest, `"`); ok {
			return value
		}
	}
	return ""
}
