package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The protocol's vocabulary: message types per direction, the frame header,
// transaction status, authentication request codes and the SQLSTATEs the
// proxy sends on its own. Message types are bytes on the wire, but the same
// byte means different messages in each direction ('C' is Close from the
// client and CommandComplete from the server), so each direction has its
// own type and the compiler keeps them apart.

// clientMsg is the type byte of a frontend (client → server) message.
type clientMsg byte

const (
	msgBind            clientMsg = 'B'
	msgClose           clientMsg = 'C'
	msgCopyData        clientMsg = 'd'
	msgCopyDone        clientMsg = 'c'
	msgCopyFail        clientMsg = 'f'
	msgDescribe        clientMsg = 'D'
	msgExecute         clientMsg = 'E'
	msgFlush           clientMsg = 'H'
	msgFunctionCall    clientMsg = 'F'
	msgParse           clientMsg = 'P'
	msgPasswordMessage clientMsg = 'p' // also SASLInitialResponse and SASLResponse
	msgQuery           clientMsg = 'Q'
	msgSync            clientMsg = 'S'
	msgTerminate       clientMsg = 'X'
)

// serverMsg is the type byte of a backend (server → client) message.
type serverMsg byte

const (
	msgAuthentication           serverMsg = 'R'
	msgBackendKeyData           serverMsg = 'K'
	msgBindComplete             serverMsg = '2'
	msgCloseComplete            serverMsg = '3'
	msgCommandComplete          serverMsg = 'C'
	msgCopyInResponse           serverMsg = 'G'
	msgCopyOutResponse          serverMsg = 'H'
	msgDataRow                  serverMsg = 'D'
	msgEmptyQueryResponse       serverMsg = 'I'
	msgErrorResponse            serverMsg = 'E'
	msgNoData                   serverMsg = 'n'
	msgNoticeResponse           serverMsg = 'N'
	msgNotificationResponse     serverMsg = 'A'
	msgParameterDescription     serverMsg = 't'
	msgParameterStatus          serverMsg = 'S'
	msgParseComplete            serverMsg = '1'
	msgPortalSuspended          serverMsg = 's'
	msgReadyForQuery            serverMsg = 'Z'
	msgRowDescription           serverMsg = 'T'
	msgNegotiateProtocolVersion serverMsg = 'v'
)

// Describe and Close name what they act on.
const (
	targetStatement byte = 'S'
	targetPortal    byte = 'P'
)

// Fields of ErrorResponse and NoticeResponse the proxy reads or drops.
const (
	fieldWhere    byte = 'W'
	fieldFile     byte = 'F'
	fieldLine     byte = 'L'
	fieldRoutine  byte = 'R'
	fieldPosition byte = 'P'
)

// headerLen is a frame's header: the type byte and the int32 length, which
// counts itself but not the type byte.
const headerLen = 5

// frameHeader reads the header at the start of b. total is the whole
// frame's size, type byte included. ok is false when b holds less than a
// header; err is set when the length is impossible (under 4) or over max
// (max <= 0: no limit).
func frameHeader(b []byte, max int) (typ byte, total int, ok bool, err error) {
	if len(b) < headerLen {
		return 0, 0, false, nil
	}
	n := int(int32(binary.BigEndian.Uint32(b[1:headerLen])))
	if n < 4 {
		return b[0], 0, true, protoErrorf("message %q has invalid length %d", b[0], n)
	}
	if max > 0 && n > max {
		return b[0], 0, true, protoErrorf("message %q of %d bytes exceeds the limit of %d bytes (limits.max_message_bytes)", b[0], n, max)
	}
	return b[0], n + 1, true, nil
}

// frameBody is the part of a whole frame after its header.
func frameBody(msg []byte) []byte { return msg[headerLen:] }

// appendFrame appends a frame of type typ with the given body parts; every
// frame the proxy builds by hand goes through it.
func appendFrame(dst []byte, typ byte, body ...[]byte) []byte {
	n := 4
	for _, b := range body {
		n += len(b)
	}
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	for _, b := range body {
		dst = append(dst, b...)
	}
	return dst
}

// Frames without a body, built once.
var (
	syncFrame      = appendFrame(nil, byte(msgSync))
	terminateFrame = appendFrame(nil, byte(msgTerminate))
)

// isSyncFrame reports whether b starts with a whole Sync message.
func isSyncFrame(b []byte) bool {
	return len(b) >= len(syncFrame) && string(b[:len(syncFrame)]) == string(syncFrame)
}

// txStatus is the transaction status a ReadyForQuery reports.
type txStatus byte

const (
	txIdle    txStatus = 'I' // not in a transaction block
	txInBlock txStatus = 'T' // in a transaction block
	txFailed  txStatus = 'E' // in a failed transaction block
)

// readyStatus reads the status of a ReadyForQuery frame (txIdle when the
// frame is malformed: the client gets the frame as it is anyway).
func readyStatus(msg []byte) txStatus {
	if len(msg) == headerLen+1 {
		return txStatus(msg[headerLen])
	}
	return txIdle
}

// Authentication request codes (the int32 after an 'R' header).
const (
	authOK           = 0
	authSASL         = 10
	authSASLContinue = 11
	authSASLFinal    = 12
)

// Startup packet codes (protocol 3.0 and the special requests).
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	maxStartupPacket  = 10000 // PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
)

// SQLSTATEs of the errors the proxy sends on its own (the stale and required
// codes are configured: guard.stale_sqlstate, guard.required_sqlstate).
const (
	sqlstateProtocolViolation   = "08P01"
	sqlstateConnectionFailure   = "08006"
	sqlstateTooManyConnections  = "53300"
	sqlstateOutOfMemory         = "53200"
	sqlstateAdminShutdown       = "57P01"
	sqlstateCannotConnectNow    = "57P03"
	sqlstateInvalidAuthSpec     = "28000"
	sqlstateProgramLimit        = "54000"
	sqlstateFeatureNotSupported = "0A000"
)

// Names of the proxy's own prepared statements and portals. The prefix is
// reserved: a client's own statements never use it.
const (
	reservedPrefix = "pgoptimist_"
	raiseName      = reservedPrefix + "raise" // raises an error of the proxy inside a pipeline
)

// protocolError is a malformed or hostile message from a client. It ends the
// session with FATAL 08P01.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "protocol violation: " + e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// errorFields builds an ErrorResponse or NoticeResponse frame.
func encodeError(severity, code, message, detail, hint string) []byte {
	e := &pgproto3.ErrorResponse{
		Severity:            severity,
		SeverityUnlocalized: severity,
		Code:                code,
		Message:             message,
		Detail:              detail,
		Hint:                hint,
	}
	b, _ := e.Encode(nil)
	return b
}

// writeFatal sends a FATAL ErrorResponse straight to a connection (used
// before and outside the relay, where no buffered writer exists yet).
func writeFatal(c net.Conn, code, message string) error {
	_, err := c.Write(encodeError("FATAL", code, message, "", ""))
	return err
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (string, []byte, error) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], nil
		}
	}
	return "", nil, errors.New("missing string terminator")
}

// cstringBytes is cstring without the copy.
func cstringBytes(b []byte) ([]byte, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}
