"""hls4ml extension layers of the integer U-Net, registered through hls4ml's extension API.

* ``MultiThreshold``: BatchNorm + activation quantizer as the integer engine's per-channel
  thresholds (:mod:`unet.integer.thresholds`): ``code = codes[c][#{k : o_c acc >= t_ck}]``.
* ``UpConcat``: the engine's bilinear x2 upsampling of codes with edge replication (16 times
  the interpolated codes) followed by the skip connection times 16, concatenated on channels.

Both are written for ``io_parallel`` (flat channels-last arrays); the HLS code is in
``nnet_unet.h`` beside this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("nnet_unet.h")
_REGISTERED: set[str] = set()


def _layer_classes():
    from hls4ml.model.attributes import Attribute
    from hls4ml.model.layers import Layer
    from hls4ml.model.types import IntegerPrecisionType

    class MultiThreshold(Layer):
        """Accumulators (H, W, C) -> activation codes by per-channel integer thresholds."""

        _expected_attributes = [Attribute("n_chan"), Attribute("n_thresholds"), Attribute("acc_bits")]

        def initialize(self) -> None:
            shape = list(self.get_input_variable().shape)
            self.add_output_variable(shape)
            # the comparison type holds every oriented accumulator (one more bit for the negation)
            acc_bits = int(self.get_attr("acc_bits"))
            for name, var, bits in (("orientation", "o{index}", 2), ("thresholds", "t{index}", acc_bits + 1),
                                    ("codes", "v{index}", None)):
                data = np.asarray(self.get_attr(f"{name}_data"))
                width = bits or max(2, int(np.abs(data).max()).bit_length() + 1)
                self.add_weights_variable(name=name, var_name=var, data=data,
                                          precision=IntegerPrecisionType(width=width, signed=True))

    class UpConcat(Layer):
        """Codes y (h, w, Cu) and skip (2h, 2w, Cs) -> (2h, 2w, Cu + Cs): [16 bilinear(y), 16 skip]."""

        _expected_attributes = [Attribute("in_height"), Attribute("in_width"), Attribute("n_chan_up"),
                                Attribute("n_chan_skip")]

        def initialize(self) -> None:
            h, w = self.get_attr("in_height"), self.get_attr("in_width")
            self.add_output_variable([2 * h, 2 * w, self.get_attr("n_chan_up") + self.get_attr("n_chan_skip")])

    return MultiThreshold, UpConcat


MT_CONFIG = """struct config{index} : nnet::multithreshold_config {{
    static const unsigned n_pixels = {n_pixels};
    static const unsigned n_chan = {n_chan};
    static const unsigned n_thresholds = {n_thresholds};
    typedef {orientation_t.name} orient_t;
    typedef {thresholds_t.name} threshold_t;
    typedef {codes_t.name} code_t;
}};\n"""
MT_CALL = "nnet::multithreshold<{input_t}, {output_t}, {config}>({input}, {output}, {o}, {t}, {v});"
UC_CONFIG = """struct config{index} : nnet::upconcat_config {{
    static const unsigned in_height = {in_height};
    static const unsigned in_width = {in_width};
    static const unsigned n_chan_up = {n_chan_up};
    static const unsigned n_chan_skip = {n_chan_skip};
}};\n"""
UC_CALL = "nnet::upconcat<{input1_t}, {input2_t}, {output_t}, {config}>({input1}, {input2}, {output});"


def register(backend_name: str = "Vivado") -> None:
    """Register both layers, their templates and ``nnet_unet.h`` with hls4ml (once per process)."""
    if backend_name in _REGISTERED:
        return
    import hls4ml
    from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate

    multithreshold, upconcat = _layer_classes()
    hls4ml.model.layers.register_layer("MultiThreshold", multithreshold)
    hls4ml.model.layers.register_layer("UpConcat", upconcat)
    include = ["nnet_utils/nnet_unet.h"]

    class MTConfig(LayerConfigTemplate):
        def __init__(self) -> None:
            super().__init__(multithreshold)
            self.template = MT_CONFIG

        def format(self, node) -> str:
            params = self._default_config_params(node)
            params["n_pixels"] = int(np.prod(node.get_input_variable().shape[:-1]))
            return self.template.format(**params)

    class MTCall(FunctionCallTemplate):
        def __init__(self) -> None:
            super().__init__(multithreshold, include_header=include)
            self.template = MT_CALL

        def format(self, node) -> str:
            params = self._default_function_params(node)
            params.update(o=node.get_weights("orientation").name, t=node.get_weights("thresholds").name,
                          v=node.get_weights("codes").name)
            return self.template.format(**params)

    class UCConfig(LayerConfigTemplate):
        def __init__(self) -> None:
            super().__init__(upconcat)
            self.template = UC_CONFIG

        def format(self, node) -> str:
            return self.template.format(**self._default_config_params(node))

    class UCCall(FunctionCallTemplate):
        def __init__(self) -> None:
            super().__init__(upconcat, include_header=include)
            self.template = UC_CALL

        def format(self, node) -> str:
            params = {"config": f"config{node.index}", "output_t": node.get_output_variable().type.name,
                      "output": node.get_output_variable().name}
            for i in (0, 1):
                var = node.get_input_variable(node.inputs[i])
                params[f"input{i + 1}_t"], params[f"input{i + 1}"] = var.type.name, var.name
            return self.template.format(**params)

    backend = hls4ml.backends.get_backend(backend_name)
    for template in (MTConfig, MTCall, UCConfig, UCCall):
        backend.register_template(template)
    backend.register_source(HEADER)
    _REGISTERED.add(backend_name)
