// oneDNN linear layers with weights packed once, reached through libtorch's dispatcher. The ops
// (mkldnn::_reorder_linear_weight, mkldnn::_linear_pointwise) are registered by libtorch_cpu but
// are not part of the C API that tch wraps. Each function returns a new tensor, or null with the
// error's text in `error` (at most `error_len` bytes), so that Rust can fall back to a plain product.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/Tensor.h>
#include <c10/util/Exception.h>
#include <cstring>
#include <exception>

namespace {

void write_error(const char* what, char* error, size_t error_len) {
  if (error_len == 0) return;
  std::strncpy(error, what, error_len - 1);
  error[error_len - 1] = '\0';
}

c10::OperatorHandle op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

}  // namespace

extern "C" {

// weight [out, in] → the same weight in oneDNN's blocked layout, for inputs of about `rows` rows.
at::Tensor* embedfleet_pack_linear_weight(const at::Tensor* weight, int64_t rows, char* error, size_t error_len) {
  try {
    static const c10::OperatorHandle reorder = op("mkldnn::_reorder_linear_weight", "");
    torch::jit::Stack stack{*weight, rows > 0 ? c10::IValue(rows) : c10::IValue()};
    reorder.callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_len);
    return nullptr;
  } catch (...) {
    // Nothing may unwind into Rust through extern "C".
    write_error("a C++ exception that is not a std::exception", error, error_len);
    return nullptr;
  }
}

// x [rows, in] · packed weightᵀ + bias, then `attr` ("none", "gelu", "relu"; `algorithm` "none"
// or "tanh" for gelu).
at::Tensor* embedfleet_packed_linear(const at::Tensor* x, const at::Tensor* packed, const at::Tensor* bias, const char* attr,
                                     const char* algorithm, char* error, size_t error_len) {
  try {
    static const c10::OperatorHandle linear = op("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{*x,
                            *packed,
                            bias ? c10::IValue(*bias) : c10::IValue(),
                            c10::IValue(std::string(attr)),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()),
                            algorithm ? c10::IValue(std::string(algorithm)) : c10::IValue()};
    linear.callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_len);
    return nullptr;
  } catch (...) {
    // Nothing may unwind into Rust through extern "C".
    write_error("a C++ exception that is not a std::exception", error, error_len);
    return nullptr;
  }
}

// x [rows, in] · packed weightᵀ + bias + other (the residual), in one oneDNN call.
at::Tensor* embedfleet_packed_linear_add(const at::Tensor* x, const at::Tensor* other, const at::Tensor* packed, const at::Tensor* bias,
                                         char* error, size_t error_len) {
  try {
    static const c10::OperatorHandle linear = op("mkldnn::_linear_pointwise", "binary");
    torch::jit::Stack stack{*x, *other, *packed, bias ? c10::IValue(*bias) : c10::IValue(), c10::IValue(std::string("add"))};
    linear.callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_len);
    return nullptr;
  } catch (...) {
    // Nothing may unwind into Rust through extern "C".
    write_error("a C++ exception that is not a std::exception", error, error_len);
    return nullptr;
  }
}

}  // extern "C"
