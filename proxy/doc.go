// Package proxy is pgoptimist's wire-protocol relay: the listener, client
// sessions, the relay loops and the protocol state they keep, the version
// guard's run-time half, TLS, cancel forwarding, limits and metrics.
//
// The data path, file by file:
//
//   - server.go: accept (Server.Serve), reload, shutdown.
//   - session.go: a session's life, from accept to close; the one place
//     that tells a client why its session ends.
//   - startup.go: before the relay: SSLRequest/GSSENCRequest, the startup
//     packet, the upstream connection and the authentication exchange,
//     answered as PostgreSQL would (framereader.go reads frames there).
//   - registry.go, catalog.go, policy.go: what is guarded in a database:
//     the configuration completed from the catalog, once per database and
//     configuration generation; resolution.go: what the session's
//     unqualified names reach, asked of the server.
//   - loop_linux.go: the event loop that drives every relaying session:
//     reads, writes, back-pressure (buffer.go holds the bytes).
//   - framing.go: the relay loop proper. Client and server bytes are cut
//     into frames; most are copied through as they arrive (pass), the
//     proxy's own answers are dropped (skip), the few the guard must read
//     are gathered whole (fetch).
//   - guard_client.go: what the guard does with a client's Query, Parse,
//     Bind, Execute and Close: plan (the rewrite package), rewrite, and for
//     a checked statement hold the client until its outcome (check.go).
//   - queue.go: what the server owes, in order, and what to do with each
//     answer; guard_server.go: the answers that end a checked statement
//     (CommandComplete, ErrorResponse, ReadyForQuery) and what follows
//     them: the reply to the client, or the stale error the server is made
//     to raise (stale.go).
//   - sqlprepare.go: SQL-level PREPARE, EXECUTE, DEALLOCATE and DISCARD
//     ALL: what they do to the session's prepared statements, followed
//     from the server's answers, the extra argument every EXECUTE of
//     a statement prepared with the injected version parameter needs, and
//     preparing a guarded statement again from the client's text when the
//     session's names have come to resolve otherwise.
//   - tracked.go, tracked_client.go, tracked_rows.go: tracked, required
//     and observe modes: the versions a session read (its memory), what
//     the client's reads and writes become (hidden columns, the injected
//     version), and the result sets stripped and captured on their way
//     back; aloneread.go: reads run alone in their implicit transaction,
//     sent as written.
//   - ownquery.go: the proxy's own questions during the relay (name
//     resolution, discovery after a reload), answered to the proxy alone.
//   - protocol.go: the vocabulary: message types per direction, frame
//     header, transaction status, SQLSTATEs.
//   - limits.go, metrics.go: process-wide limits and the Prometheus metrics.
//
// So a Parse goes processClient (framing.go) → onParse (guard_client.go),
// which plans it and writes the rewritten Parse to the server; its
// ParseComplete comes back through processServer (framing.go), matched to
// the request by the response queue (queue.go).
package proxy
