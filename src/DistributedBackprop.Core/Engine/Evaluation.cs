using DistributedBackprop.Data;
using DistributedBackprop.Network;

namespace DistributedBackprop.Engine;

/// <summary>Loss, accuracy and confusion matrix (rows: true class, columns: predicted class).</summary>
public sealed record EvaluationResult(double Loss, double Accuracy, int Rows, int[,] Confusion);

/// <summary>Forward passes over a whole data set in blocks; no gradients.</summary>
public sealed class Evaluator
{
    private const int BlockRows = 512;
    private readonly Network<float> _network;

    public Evaluator(Architecture architecture)
    {
        _network = new Network<float>(architecture);
    }

    public EvaluationResult Evaluate(ReadOnlySpan<float> parameters, Dataset data)
    {
        int outputs = _network.Architecture.Outputs;
        var confusion = new int[outputs, outputs];
        double loss = 0;
        int correct = 0;
        for (int start = 0; start < data.Rows; start += BlockRows)
        {
            int rows = Math.Min(BlockRows, data.Rows - start);
            data.Values.AsSpan(start * data.Features, rows * data.Features).CopyTo(_network.Input(rows));
            _network.Forward(parameters, rows);
            ReadOnlySpan<int> labels = data.Labels.AsSpan(start, rows);
            BatchResult result = _network.Evaluate(labels);
            loss += result.LossSum;
            correct += result.Correct;
            ReadOnlySpan<float> output = _network.Output(rows);
            for (int r = 0; r < rows; r++)
            {
                int predicted = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(output.Slice(r * outputs, outputs));
                confusion[labels[r], predicted]++;
            }
        }
        return new EvaluationResult(loss / data.Rows, (double)correct / data.Rows, data.Rows, confusion);
    }

    /// <summary>Output activations (probabilities for softmax) of every row, rows × outputs.</summary>
    public float[] Predict(ReadOnlySpan<float> parameters, Dataset data)
    {
        int outputs = _network.Architecture.Outputs;
        var result = new float[data.Rows * outputs];
        for (int start = 0; start < data.Rows; start += BlockRows)
        {
            int rows = Math.Min(BlockRows, data.Rows - start);
            data.Values.AsSpan(start * data.Features, rows * data.Features).CopyTo(_network.Input(rows));
            _network.Forward(parameters, rows);
            _network.Output(rows).CopyTo(result.AsSpan(start * outputs));
        }
        return result;
    }
}
