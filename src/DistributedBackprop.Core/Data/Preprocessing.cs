using System.Numerics.Tensors;

namespace DistributedBackprop.Data;

/// <summary>
/// The input transform x' = (x − shift) · scale, per feature. Fitted on the training rows, stored in the
/// model file (tensors input.shift and input.scale) and applied unchanged at evaluation and prediction.
/// </summary>
public sealed class Preprocessing
{
    public Preprocessing(float[] shift, float[] scale)
    {
        if (shift.Length != scale.Length)
        {
            throw new ArgumentException("shift and scale must have one value per feature");
        }
        Shift = shift;
        Scale = scale;
    }

    public float[] Shift { get; }
    public float[] Scale { get; }
    public int Features => Shift.Length;

    /// <summary>Images: x' = x · (1/255), (1/255) rounded to a float first (not x / 255 rounded once: 7 · (1/255) and 7 / 255 are neighbouring floats); <see cref="ByteCodedValues"/> relies on these bits.</summary>
    public static Preprocessing UnitRange(int features)
    {
        var scale = new float[features];
        scale.AsSpan().Fill(ByteCodedValues.ImageScale);
        return new Preprocessing(new float[features], scale);
    }

    /// <summary>
    /// Standardisation: shift = mean, scale = 1/std (population std, in double, rows in order); a constant
    /// feature gets scale 1, so it maps to 0 instead of dividing by zero.
    /// </summary>
    public static Preprocessing Standardise(Dataset train)
    {
        int f = train.Features;
        var sum = new double[f];
        var squares = new double[f];
        for (int r = 0; r < train.Rows; r++)
        {
            ReadOnlySpan<float> row = train.Row(r);
            for (int j = 0; j < f; j++)
            {
                sum[j] += row[j];
            }
        }
        var shift = new float[f];
        var scale = new float[f];
        for (int j = 0; j < f; j++)
        {
            shift[j] = (float)(sum[j] / Math.Max(1, train.Rows));
        }
        for (int r = 0; r < train.Rows; r++)
        {
            ReadOnlySpan<float> row = train.Row(r);
            for (int j = 0; j < f; j++)
            {
                double d = row[j] - (double)shift[j];
                squares[j] += d * d;
            }
        }
        for (int j = 0; j < f; j++)
        {
            double std = Math.Sqrt(squares[j] / Math.Max(1, train.Rows));
            scale[j] = std > 1e-12 ? (float)(1.0 / std) : 1f;
        }
        return new Preprocessing(shift, scale);
    }

    /// <summary>The default for a data kind: standardise tables, scale images to [0, 1].</summary>
    public static Preprocessing Fit(Dataset train) =>
        train.Kind == DataKind.Images ? UnitRange(train.Features) : Standardise(train);

    /// <summary>A new data set with every row transformed.</summary>
    public Dataset Apply(Dataset data)
    {
        if (data.Features != Features)
        {
            throw new DataException($"{data.Source}: has {data.Features} features, the model expects {Features}");
        }
        var values = new float[data.Values.Length];
        for (int r = 0; r < data.Rows; r++)
        {
            Span<float> row = values.AsSpan(r * Features, Features);
            TensorPrimitives.Subtract(data.Row(r), Shift, row);
            TensorPrimitives.Multiply(row, Scale, row);
        }
        return new Dataset(data.Source, Features, values, data.Labels, data.Classes, data.Kind);
    }
}
