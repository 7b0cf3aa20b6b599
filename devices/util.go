package devices

import (
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilhealth/vigil/devices/envelope"
)

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func decodeReceiptBody(body []byte, r *envelope.Receipt) error {
	sr := envelope.SignedReceipt{Body: body, Sig: []byte{0}, KeyID: "-"}
	wire, err := sr.Marshal()
	if err != nil {
		return err
	}
	_, rec, err := envelope.ParseSignedReceipt(wire)
	if err != nil {
		return err
	}
	*r = *rec
	return nil
}
