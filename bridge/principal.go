package bridge

import (
	"context"
	"errors"
	"net/url"
)

// A principal is who a request comes from, as the layer in front of the
// bridge authenticated it (an API key's name, never the key), on which
// site (several sites may share a backend). A session belongs to the
// principal that opened it: another principal, or the same key on another
// site, presenting its id is told it does not exist.
type principal struct {
	Site string
	Key  string
}

type principalKey struct{}

type siteKey struct{}

type credentialKey struct{}

// WithCredential returns a context that names the very credential the
// request presented (a key's fingerprint, say), among those the principal
// may use: a session remembers the last it was used with, so that
// EndSessions can end those whose credential was revoked.
func WithCredential(ctx context.Context, credential string) context.Context {
	return context.WithValue(ctx, credentialKey{}, credential)
}

func credentialFrom(ctx context.Context) string {
	c, _ := ctx.Value(credentialKey{}).(string)
	return c
}

// WithPrincipal returns a context that names the request's principal.
func WithPrincipal(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, principalKey{}, name)
}

// WithSite returns a context that names the site the request came to,
// such as the addresses it listens on: sessions and per-key limits are
// the site's own.
func WithSite(ctx context.Context, site string) context.Context {
	return context.WithValue(ctx, siteKey{}, site)
}

// principalFrom returns the principal named in ctx.
func principalFrom(ctx context.Context) principal {
	name, _ := ctx.Value(principalKey{}).(string)
	site, _ := ctx.Value(siteKey{}).(string)
	return principal{Site: site, Key: name}
}

type endpointQueryKey struct{}

// WithEndpointQuery returns a context whose legacy SSE endpoint event adds
// name=value to the URI it gives the client, for clients that can only
// authenticate in the URL.
func WithEndpointQuery(ctx context.Context, name, value string) context.Context {
	return context.WithValue(ctx, endpointQueryKey{}, url.Values{name: {value}}.Encode())
}

// ErrTooManySessions is returned when a principal already holds as many
// sessions as it may.
var ErrTooManySessions = errors.New("too many sessions for this client")
