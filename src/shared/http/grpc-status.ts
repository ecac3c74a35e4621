/**
 * gRPC callers read errors from `grpc-status` and `grpc-message`, not from the HTTP status: an
 * HTTP error page reaches them as "protocol error" and loses Kelsingra's explanation. Errors
 * Kelsingra makes itself are therefore answered to them as a trailers-only gRPC response.
 */

/** gRPC status codes Kelsingra answers with (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
export const GrpcStatus = {
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

/** Whether a request is a gRPC call (by its content type, as gRPC servers decide it). */
export function isGrpc(contentType: string | string[] | undefined): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc');
}

/** The gRPC status closest to an HTTP status Kelsingra would have answered. */
export function grpcStatusOf(httpStatus: number): number {
  switch (httpStatus) {
    case 400:
    case 413:
    case 431:
      return httpStatus === 400 ? GrpcStatus.INVALID_ARGUMENT : GrpcStatus.RESOURCE_EXHAUSTED;
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
      return GrpcStatus.UNIMPLEMENTED;
    case 408:
    case 504:
      return GrpcStatus.DEADLINE_EXCEEDED;
    case 429:
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case 501:
      return GrpcStatus.UNIMPLEMENTED;
    case 502:
    case 503:
      return GrpcStatus.UNAVAILABLE;
    default:
      return httpStatus >= 500 ? GrpcStatus.INTERNAL : GrpcStatus.UNAVAILABLE;
  }
}

/**
 * The headers of a trailers-only gRPC answer (HTTP 200, no body): the message is
 * percent-encoded as gRPC requires, so any text survives.
 */
export function grpcErrorHeaders(httpStatus: number, message: string): Record<string, string> {
  return {
    'content-type': 'application/grpc',
    'grpc-status': String(grpcStatusOf(httpStatus)),
    'grpc-message': encodeGrpcMessage(message),
  };
}

/** Percent-encoding of grpc-message: printable ASCII except '%' passes as it is. */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
