/**
 * A forward the server will not make. Its own module so that the control plane can recognise
 * the refusal without loading the Kafka agent, and with it kafkajs, when no Kafka is configured.
 */
export class ForwardRefused extends Error {
  override readonly name = 'ForwardRefused';
  constructor(
    message: string,
    /** 403: one of Kelsingra's own topics; 404: a topic dev does not have. */
    readonly status: 403 | 404,
  ) {
    super(message);
  }
}
