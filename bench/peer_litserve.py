"""LitServe serving the benchmark's embedding model, as a LitServe user would write it: run by
``bench.peers`` with the python of LitServe's own venv (it imports nothing of modelgate).

``python bench/peer_litserve.py MODEL_DIR PORT THREADS MAX_BATCH DELAY_S [WORKERS [ONNX_FILE]]``

One text per request (``{"inputs": "..."}``), batched by LitServe up to MAX_BATCH within DELAY_S;
mean pooling and L2 normalisation, as the model's sentence-transformers config says and as
modelgate's feature-extraction engine does. Answers ``{"outputs": [384 floats]}``. With
ONNX_FILE (the export modelgate's ``engine: onnx`` made of the same weights), the forward pass
runs on ONNX Runtime with the same session options, so the two are compared engine for engine.
"""

import sys

import litserve as ls  # type: ignore[import-not-found]
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer


class Embeddings(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: str, threads: int, onnx: str, **options: object) -> None:
        super().__init__(**options)
        self.model_dir, self.threads, self.onnx = model_dir, threads, onnx

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.device = device
        if self.onnx:
            import onnxruntime as ort  # type: ignore[import-not-found]

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.enable_mem_pattern = False
            session = ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            self.forward = lambda enc: torch.from_numpy(
                session.run(None, {n: enc[n].numpy() for n in names})[0]
            )
        else:
            model = AutoModel.from_pretrained(self.model_dir).eval().to(device)
            self.forward = lambda enc: model(**enc).last_hidden_state

    def decode_request(self, request: dict[str, str]) -> str:
        return request["inputs"]

    def batch(self, inputs: list[str]) -> list[str]:
        return list(inputs)

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> list[list[float]]:
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=256, return_tensors="pt"
        ).to(self.device)
        hidden = self.forward(encoded)
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1).tolist()  # type: ignore[no-any-return]

    def unbatch(self, output: list[list[float]]) -> list[list[float]]:
        return output

    def encode_response(self, output: list[float]) -> dict[str, list[float]]:
        return {"outputs": output}


def main() -> None:
    model_dir, port, threads, max_batch, delay_s = sys.argv[1:6]
    workers = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    onnx = sys.argv[7] if len(sys.argv) > 7 else ""
    api = Embeddings(
        model_dir, int(threads), onnx, max_batch_size=int(max_batch), batch_timeout=float(delay_s)
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers)
    server.run(
        host="127.0.0.1",
        port=int(port),
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
