// The part of oneDNN's v3 C API (oneapi/dnnl/dnnl.h) that onednn_linear.cc calls, declared here because the
// Paddle wheel ships libdnnl.so.3 but only the top-level wrappers of its headers. oneDNN keeps its C
// ABI, enumerator values included, stable within a major version; the op checks dnnl_version() is 3.x.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

typedef int dnnl_status_t;  // dnnl_success = 0
typedef int64_t dnnl_dim_t;
typedef dnnl_dim_t dnnl_dims_t[12];  // DNNL_MAX_NDIMS
typedef struct dnnl_engine* dnnl_engine_t;
typedef struct dnnl_stream* dnnl_stream_t;
typedef struct dnnl_memory_desc* dnnl_memory_desc_t;
typedef struct dnnl_memory* dnnl_memory_t;
typedef struct dnnl_primitive_desc* dnnl_primitive_desc_t;
typedef struct dnnl_primitive* dnnl_primitive_t;
typedef struct dnnl_primitive_attr* dnnl_primitive_attr_t;
typedef struct dnnl_post_ops* dnnl_post_ops_t;
typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;
typedef struct {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
} dnnl_version_t;

dnnl_status_t dnnl_engine_create(dnnl_engine_t* engine, int kind, size_t index);
dnnl_status_t dnnl_stream_create(dnnl_stream_t* stream, dnnl_engine_t engine, unsigned flags);
dnnl_status_t dnnl_memory_desc_create_with_strides(dnnl_memory_desc_t* desc, int ndims, const dnnl_dims_t dims,
                                                   int data_type, const dnnl_dims_t strides);
dnnl_status_t dnnl_memory_desc_destroy(dnnl_memory_desc_t desc);
dnnl_status_t dnnl_memory_create(dnnl_memory_t* memory, const struct dnnl_memory_desc* desc, dnnl_engine_t engine,
                                 void* handle);
dnnl_status_t dnnl_memory_destroy(dnnl_memory_t memory);
dnnl_status_t dnnl_primitive_attr_create(dnnl_primitive_attr_t* attr);
dnnl_status_t dnnl_primitive_attr_destroy(dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_primitive_attr_set_fpmath_mode(dnnl_primitive_attr_t attr, int mode);
dnnl_status_t dnnl_primitive_attr_set_post_ops(dnnl_primitive_attr_t attr, const struct dnnl_post_ops* post_ops);
dnnl_status_t dnnl_post_ops_create(dnnl_post_ops_t* post_ops);
dnnl_status_t dnnl_post_ops_destroy(dnnl_post_ops_t post_ops);
dnnl_status_t dnnl_post_ops_append_eltwise(dnnl_post_ops_t post_ops, int alg_kind, float alpha, float beta);
dnnl_status_t dnnl_post_ops_append_binary(dnnl_post_ops_t post_ops, int alg_kind, const struct dnnl_memory_desc* src1);
dnnl_status_t dnnl_post_ops_append_sum(dnnl_post_ops_t post_ops, float scale, int32_t zero_point, int data_type);
dnnl_status_t dnnl_matmul_primitive_desc_create(dnnl_primitive_desc_t* desc, dnnl_engine_t engine,
                                                const struct dnnl_memory_desc* src,
                                                const struct dnnl_memory_desc* weights,
                                                const struct dnnl_memory_desc* bias,
                                                const struct dnnl_memory_desc* dst,
                                                const struct dnnl_primitive_attr* attr);
dnnl_status_t dnnl_primitive_desc_destroy(dnnl_primitive_desc_t desc);
dnnl_status_t dnnl_primitive_create(dnnl_primitive_t* primitive, const struct dnnl_primitive_desc* desc);
dnnl_status_t dnnl_primitive_destroy(dnnl_primitive_t primitive);
dnnl_status_t dnnl_primitive_execute(const struct dnnl_primitive* primitive, dnnl_stream_t stream, int nargs,
                                     const dnnl_exec_arg_t* args);
const dnnl_version_t* dnnl_version();

}  // extern "C"

namespace onednn {
// enumerator values of oneDNN v3 (dnnl_common_types.h, dnnl_types.h)
constexpr int kSuccess = 0;
constexpr int kCpuEngine = 1;          // dnnl_cpu
constexpr int kFloat32 = 3;            // dnnl_f32
constexpr unsigned kInOrder = 0x1;     // dnnl_stream_in_order
constexpr int kGeluErf = 0x31;         // dnnl_eltwise_gelu_erf
constexpr int kSwish = 0x2c;           // dnnl_eltwise_swish: x * sigmoid(alpha x)
constexpr int kBinaryMul = 0x1fff1;    // dnnl_binary_mul
constexpr int kDataTypeUndef = 0;      // dnnl_data_type_undef: a sum post-op reads dst in dst's type
constexpr int kFpmathStrict = 0;       // dnnl_fpmath_mode_strict
constexpr int kFpmathBf16 = 1;         // dnnl_fpmath_mode_bf16: f32 tensors, bf16 products, f32 sums
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgBias = 41;
// DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1: the second operand of a binary post-op in slot 0
// (v3's base is 32768; v1 and v2 had 16384)
constexpr int kArgFirstPostOpSrc1 = 32768 | 2;
}  // namespace onednn
