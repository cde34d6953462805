// The KV cache of one generation: one buffer per cache tensor of the step graph, filled scale by scale.
// KV tensors are sequence-major (tokens, rows, heads, head_dim), so the prefix a step reads is the start of the
// buffer. On WebAssembly the buffers are typed arrays; where the step runs on WebGPU they are GPU buffers, the
// step's new keys and values are copied into them on the GPU and read from there by the next step.

import { SiteError } from "./errors.mjs";

const SLOT = "slot";
const ARRAYS = {
  float32: Float32Array,
  float16: Uint16Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
};

export function arrayType(dtype) {
  const type = ARRAYS[dtype];
  if (!type) throw new SiteError(`the site uses tensor type ${dtype}, which this page cannot handle`);
  return type;
}

export function concrete(shape, dims) {
  return shape.map((d) => (typeof d === "number" ? d : dims[d]));
}

export function size(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

/** `data` viewed as `like`'s type: float16 outputs may arrive as Float16Array, the cache holds their bits. */
function rawData(data, like) {
  if (data.constructor === like.constructor) return data;
  return new like.constructor(data.buffer, data.byteOffset, data.byteLength / like.BYTES_PER_ELEMENT);
}

function key(t) {
  return `${t.layer}:${t.is_value}`;
}

class Cache {
  constructor(ort, spec, model, rows) {
    this.ort = ort;
    this.slots = spec.outputs.filter((t) => t.role === SLOT);
    this.layout = new Map();
    for (const t of this.slots) {
      const Type = arrayType(t.dtype);
      const rowSize = size(concrete(t.shape.slice(1), { rows }));
      this.layout.set(key(t), { Type, rowSize, rowBytes: rowSize * Type.BYTES_PER_ELEMENT, dtype: t.dtype });
    }
    this.capacity = model.total_tokens;
    this.length = 0;
  }
}

/** The cache in typed arrays (WebAssembly, or a step on the CPU). */
export class CpuKVCache extends Cache {
  constructor(ort, spec, model, rows) {
    super(ort, spec, model, rows);
    this.buffers = new Map([...this.layout].map(([k, l]) => [k, new l.Type(this.capacity * l.rowSize)]));
  }

  /** The cached prefix for the past input `t` of the step, shaped `shape`. */
  past(t, shape) {
    const l = this.layout.get(key(t));
    return new this.ort.Tensor(l.dtype, this.buffers.get(key(t)).subarray(0, this.length * l.rowSize), shape);
  }

  /** Append the step's new keys and values (`tokens` of them) from its outputs. */
  async append(outputs, tokens) {
    for (const t of this.slots) {
      const l = this.layout.get(key(t));
      const buffer = this.buffers.get(key(t));
      buffer.set(rawData(outputs[t.name].data, buffer), this.length * l.rowSize);
    }
    this.length += tokens;
  }

  dispose() {}
}

/** The cache in GPU buffers of onnxruntime-web's WebGPU device: nothing goes back to the CPU between steps. */
export class GpuKVCache extends Cache {
  constructor(ort, spec, model, rows, device) {
    super(ort, spec, model, rows);
    this.device = device;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    this.buffers = new Map([...this.layout].map(([k, l]) => [k, device.createBuffer({ size: this.capacity * l.rowBytes, usage })]));
  }

  past(t, shape) {
    const l = this.layout.get(key(t));
    if (this.length === 0) return new this.ort.Tensor(l.dtype, new l.Type(0), shape);
    return this.ort.Tensor.fromGpuBuffer(this.buffers.get(key(t)), { dataType: l.dtype, dims: shape });
  }

  async append(outputs, tokens) {
    const encoder = this.device.createCommandEncoder();
    for (const t of this.slots) {
      const l = this.layout.get(key(t));
      const out = outputs[t.name];
      if (out.location !== "gpu-buffer") throw new SiteError(`${t.name} came back to the CPU; reload the page`);
      encoder.copyBufferToBuffer(out.gpuBuffer, 0, this.buffers.get(key(t)), this.length * l.rowBytes, tokens * l.rowBytes);
    }
    this.device.queue.submit([encoder.finish()]);
    for (const t of this.slots) outputs[t.name].dispose();
    this.length += tokens;
  }

  dispose() {
    for (const buffer of this.buffers.values()) buffer.destroy();
  }
}
